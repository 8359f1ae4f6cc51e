"""Studies as pandas tables: one row per trial, pivots over two parameters, study comparisons.

Comparing partial-data studies (alpha 0 and alpha > 0 on one grid, one study per data
fraction) adds each study's fractions and its baseline and distilled accuracies.

The reference synthesized its results by walking folders of JSON files; here every number is
read from the study database, so a table is always exactly what the study holds.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from kdsearch.config.metrics import METRICS
from kdsearch.config.spec import ALIASES, Spec
from kdsearch.errors import KDSearchError
from kdsearch.search import confidence, gain, ranking
from kdsearch.search import study as studies

STATES = {
    "complete": (optuna.trial.TrialState.COMPLETE,),
    "pruned": (optuna.trial.TrialState.PRUNED,),
    "all": None,
}
ATTRS = (
    ranking.CONFIRM_OF,
    ranking.SEED,
    "test_accuracy",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "images_per_second",
    "student_params",
    "student_flops",
    "latency_ms_b1",
    "latency_ms_b256",
    "resumed_from_epoch",
    "prune_reason",
    "checkpoint",
)
#: Text formats, rendered the same for stdout and files; parquet is binary, files only.
#: Tables for people (markdown, LaTeX) get per-column digits (:func:`readable`); tables for
#: programs (csv, json, parquet) keep every digit.
RENDERERS = {
    "markdown": lambda df, index: readable(df).to_markdown(
        index=index, disable_numparse=True, colalign=_alignment(df, index)
    ),
    "csv": lambda df, index: df.to_csv(index=index).rstrip("\n"),
    "json": lambda df, index: _json(df, index),
    "latex": lambda df, index: readable(df).to_latex(index=index).rstrip("\n"),
}
#: Columns holding accuracies: always 4 decimals, so they line up and compare by eye.
ACCURACY = ("accuracy", "best_reported", "val_mean", "val_std", "val_ci95", "test_mean", "test_std")
SUFFIXES = {
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".tex": "latex",
    ".md": "markdown",
}


def _json(df: pd.DataFrame, index: bool) -> str:
    """Records, one per row; for a study with a tuned baseline arm, an object holding the
    gain over it (``gain``, :meth:`kdsearch.search.gain.Gain.as_dict`) and the records
    (``rows``), so a program reads both from one file."""
    records = df.to_json(orient="records", indent=1)
    if "gain" not in df.attrs:
        return records
    return json.dumps({"gain": df.attrs["gain"], "rows": json.loads(records)}, indent=1)


def trials_frame(study: optuna.Study, state: str = "all") -> pd.DataFrame:
    """One row per trial, best first: value, parameters, epochs, duration, stored attributes."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=STATES[state]):
        reported = list(t.intermediate_values.values())
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "val_accuracy": t.values[0] if t.values else None,
            "best_reported": max(reported) if reported else None,
            **t.params,
            "epochs_run": t.user_attrs.get("epochs_run", len(reported)),
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        row.update({k: t.user_attrs[k] for k in ATTRS if k in t.user_attrs and k != "epochs_run"})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in (
        "epochs_run",
        "best_epoch",
        "student_params",
        "student_flops",
        "resumed_from_epoch",
    ):
        if col in df:  # integers, with gaps where a trial has no value (pruned, say)
            df[col] = df[col].astype("Int64")
    ascending = study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    return df.sort_values(
        ["val_accuracy", "best_reported"], ascending=ascending, na_position="last"
    ).reset_index(drop=True)


def configurations_table(study: optuna.Study) -> pd.DataFrame:
    """One row per configuration, best mean first (:mod:`kdsearch.search.confidence`): seeds,
    mean, std and 95 % interval of validation accuracy, test mean and std, and how it
    compares with the best (``best``, ``tied`` or ``worse``, with the test's p-value)."""
    return configurations_table_of(confidence.rank(study))


def configurations_table_of(ranked: confidence.Ranking) -> pd.DataFrame:
    """:func:`configurations_table` of an already ranked study."""
    rows = []
    for r in ranked.rows:
        c = r.configuration
        if r.rank == 1:
            verdict = "best"
        elif not ranked.tested:
            verdict = "untested"
        else:
            verdict = "tied" if r.tied else "worse"
        rows.append(
            {
                "rank": r.rank,
                "trial": c.trial.number,
                "n": c.n,
                "val_mean": c.mean,
                "val_std": c.std,
                "val_ci95": r.ci95,
                "test_mean": c.test_mean,
                "test_std": c.test_std,
                "vs_best": verdict,
                "p_value": r.p_value,
                **c.trial.params,
                "student_params": c.trial.user_attrs.get("student_params"),
                "seeds": " ".join(str(s) for s in c.seeds if s is not None),
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        df["student_params"] = df["student_params"].astype("Int64")
    df.attrs["confidence"] = ranked.summary()
    return df


def column_format(name: str, values: pd.Series) -> Callable[[Any], str]:
    """How one column's numbers print: integers whole, accuracies with 4 decimals, other
    floats with 4 significant digits of the column's smallest magnitude, or in scientific
    notation when that is below 0.001 (a weight decay of 4.43e-05 is not ``0.0000``)."""
    nums = pd.to_numeric(values, errors="coerce").dropna()
    if any(key in name for key in ACCURACY):
        return lambda v: f"{v:.4f}"
    if nums.empty or (nums == nums.round()).all():
        return lambda v: f"{int(v)}"
    smallest = nums[nums != 0].abs().min()
    if smallest < 1e-3:
        return lambda v: f"{v:.3g}" if v == 0 else f"{v:.2e}"
    decimals = int(min(4, max(0, 3 - math.floor(math.log10(smallest)))))
    return lambda v: f"{v:.{decimals}f}"


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its numeric columns as text in each column's :func:`column_format`; a
    missing value, numeric or not (a pruned trial's checkpoint), is blank, not ``nan``."""
    out = df.copy()
    for name in df.columns:
        col = df[name]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            out[name] = ["" if _missing(v) else v for v in col]
            continue
        fmt = column_format(str(name), col)
        out[name] = [fmt(v) if pd.notna(v) else "" for v in col]
    return out


def _missing(value: Any) -> bool:
    """Whether a cell holds no value (None, NaN, NA); lists and other containers never do."""
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _alignment(df: pd.DataFrame, index: bool) -> list[str]:
    """Numbers right-aligned (digits line up), text left, for tabulate's ``colalign``."""
    numeric = [
        pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        for c in df.columns
    ]
    return ["left"] * index + ["right" if n else "left" for n in numeric]


def quantile_bins(values: pd.Series, bins: int) -> pd.Series:
    """``values`` cut into ``bins`` equally filled ranges, labelled ``low–high`` in the
    column's own digits (a tied edge merges bins rather than failing)."""
    _, edges = pd.qcut(values, bins, retbins=True, duplicates="drop")
    fmt = column_format(str(values.name), values)
    labels = [f"{fmt(lo)}–{fmt(hi)}" for lo, hi in itertools.pairwise(edges)]
    if len(set(labels)) < len(labels):  # edges closer than the column's digits show
        labels = [f"{lo:.6g}–{hi:.6g}" for lo, hi in itertools.pairwise(edges)]
    return pd.cut(values, list(edges), labels=labels, include_lowest=True)


def pivot_table(df: pd.DataFrame, row: str, col: str, bins: int = 4) -> pd.DataFrame:
    """Best validation accuracy over two parameters (the reference's alpha × temperature).

    A parameter with more distinct values than ``bins`` (a continuous search) is cut into
    ``bins`` quantile ranges, so every cell holds about as many trials and the table is dense.
    """
    for name in (row, col):
        if name not in df.columns:
            params = [c for c in df.columns if c not in ("number", "state", *ATTRS)]
            raise KDSearchError(f"--pivot: no parameter {name!r} (have: {', '.join(params)})")
    data = df.dropna(subset=["val_accuracy"]).copy()
    for name in (row, col):
        if data[name].nunique() > bins and pd.api.types.is_numeric_dtype(data[name]):
            data[name] = quantile_bins(data[name], bins)
    return data.pivot_table(
        index=row, columns=col, values="val_accuracy", aggfunc="max", observed=True
    )


def pareto_rows(study: optuna.Study, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the non-dominated trials, the objectives' columns first.

    For one objective the front is the best trial (constraints respected).
    """
    front = {t.number for t in ranking.pareto(study)}
    names = study.metric_names or ["val_accuracy"]
    first = [METRICS.get(n, n) for n in names if METRICS.get(n, n) in df]
    rest = [c for c in df.columns if c not in first and c != "number"]
    return df[df["number"].isin(front)][["number", *first, *rest]].reset_index(drop=True)


def compare(names: list[str], url: str | None = None) -> pd.DataFrame:
    """One row per study: its best trial's validation and test accuracy and student size."""
    rows = []
    for name in names:
        study, spec = studies.open_study(name, url)
        done = study.get_trials(deepcopy=False, states=STATES["complete"])
        best = ranking.best(study, trials=done)
        rows.append(
            {
                "study": name,
                "student": spec.student.arch,
                "teacher": spec.teacher.arch if spec.teacher and spec.distills else "-",
                "trials": len(done),
                "val_accuracy": best.values[0] if best else math.nan,
                "test_accuracy": best.user_attrs.get("test_accuracy") if best else math.nan,
                "student_params": best.user_attrs.get("student_params") if best else None,
            }
        )
    return pd.DataFrame(rows)


def _alpha_key(spec: Spec) -> str | None:
    """The search-space key that varies distill.alpha (``alpha`` or the dotted key), if any."""
    return next((k for k in spec.search.space if ALIASES.get(k, k) == "distill.alpha"), None)


def _alpha_arms(spec: Spec) -> bool:
    """Whether a study's grid holds both arms of a partial-data run: alpha 0 and alpha > 0."""
    key = _alpha_key(spec)
    param = spec.search.space[key] if key else None
    if param is None or param.type != "categorical" or not param.choices:
        return False
    return 0 in param.choices and any(c > 0 for c in param.choices)


def partial_table(names: list[str], url: str | None = None) -> pd.DataFrame:
    """One row per partial-data study: its data fractions, baseline vs distilled accuracy.

    The baseline is the best complete trial with alpha 0 and the distilled student the best
    with alpha > 0, each picked by validation accuracy as a search would; their test
    accuracies are what the partial-data experiment compares across fractions.
    """
    rows = []
    for name in names:
        study, spec = studies.open_study(name, url)
        key = _alpha_key(spec)
        done = study.get_trials(deepcopy=False, states=STATES["complete"])
        alpha = {t.number: t.params.get(key, spec.distill.alpha) for t in done}
        row: dict[str, Any] = {
            "study": name,
            "labeled_fraction": spec.dataset.labeled_fraction,
            "subset_fraction": spec.dataset.subset_fraction,
        }
        for arm, trials in (
            ("baseline", [t for t in done if alpha[t.number] == 0]),
            ("distilled", [t for t in done if alpha[t.number] > 0]),
        ):
            best = ranking.best(study, trials=trials)
            row[f"{arm}_val_accuracy"] = best.values[0] if best else math.nan
            row[f"{arm}_test_accuracy"] = (
                best.user_attrs.get("test_accuracy", math.nan) if best else math.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def render(df: pd.DataFrame, fmt: str | None = None, index: bool = False) -> str:
    """The table as text in ``fmt`` (markdown by default), for stdout."""
    if fmt == "parquet":
        raise KDSearchError("--format parquet: a binary format; write it to a file with -o FILE")
    return RENDERERS[fmt or "markdown"](df, index)


def write(df: pd.DataFrame, output: str, fmt: str | None = None, index: bool = False) -> None:
    """Write the table to ``output`` in ``fmt``, else in its suffix's format."""
    fmt = fmt or SUFFIXES.get(Path(output).suffix)
    if fmt is None:
        raise KDSearchError(
            f"-o {output}: cannot tell the format from the suffix; pass --format "
            f"({', '.join([*RENDERERS, 'parquet'])})"
        )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(output, index=index)
    else:
        Path(output).write_text(RENDERERS[fmt](df, index) + "\n")


def compare_table(names: list[str], url: str | None = None) -> pd.DataFrame:
    """One row per study (:func:`compare`); partial-data studies (alpha 0 and alpha > 0 on
    one grid) also get both arms' numbers (:func:`partial_table`)."""
    df = compare(names, url)
    if all(_alpha_arms(studies.open_study(n, url)[1]) for n in names):
        df = df.merge(partial_table(names, url), on="study")
    return df


def table(
    name: str,
    url: str | None = None,
    *,
    state: str = "all",
    top: int | None = None,
    columns: list[str] | None = None,
    pivot: tuple[str, str] | None = None,
    bins: int = 4,
    pareto: bool = False,
    by: str = "auto",
) -> pd.DataFrame:
    """Study ``name``'s trials, best first (:func:`trials_frame`), cut as ``export-table`` does:
    only the non-dominated ones (``pareto``), the best ``top``, only ``columns``, or the best
    value per cell over ``pivot``.

    ``by="configuration"`` gives one row per configuration instead
    (:func:`configurations_table`); ``"auto"`` does so once a configuration has several seeds
    (and neither ``pivot`` nor ``pareto`` asks for trials). The table's ``attrs``
    hold the study's noise sentence (``confidence``).
    """
    if top is not None and top < 1:
        raise KDSearchError(f"--top {top}: must be >= 1")
    if bins < 2:
        raise KDSearchError(f"--bins {bins}: must be >= 2")
    if by not in ("auto", "trial", "configuration"):
        raise KDSearchError(f"--by {by}: use auto, trial or configuration")
    study, _ = studies.open_study(name, url)
    summary = confidence.rank(study)
    per_config = by == "configuration" or (
        by == "auto" and summary.df > 0 and not (pivot or pareto)  # several seeds somewhere
    )
    df = configurations_table(study) if per_config else trials_frame(study, state)
    df.attrs["confidence"] = summary.summary()
    found = gain.of_study(study)
    if found is not None:
        df.attrs["gain"] = found.as_dict()
    if df.empty or per_config:
        return _cut(df, top, columns)
    if pareto:
        df = pareto_rows(study, df)
    if pivot:
        return pivot_table(df, *pivot, bins).reset_index()
    return _cut(df, top, columns)


def _cut(df: pd.DataFrame, top: int | None, columns: list[str] | None) -> pd.DataFrame:
    """The first ``top`` rows and only ``columns`` of ``df``."""
    if df.empty:
        return df
    if top:
        df = df.head(top)
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise KDSearchError(
                f"--columns: no column {missing[0]!r} (have: {', '.join(df.columns)})"
            )
        df = df[columns]
    return df
