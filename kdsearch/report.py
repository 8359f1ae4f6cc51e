"""``kdsearch report``: PNG figures and a ``report.md`` for one study, read from its database.

Everything comes from the study (trials, user attributes, the stored spec, the ``baseline``
attribute the demo sets), so any machine that reaches the storage can report, during a search
or after. Figures are Optuna's matplotlib plots on the Agg backend (servers and CI have no
display); plotly HTML versions are added only if plotly is installed (not a dependency). A
figure that cannot be drawn is skipped with a note, so one missing figure never costs the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers, and no GUI windows left open

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib import ticker
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as ovm

from kdsearch import export
from kdsearch import storage as storages
from kdsearch import study as studies
from kdsearch.spec import Spec

#: The distillation hyperparameters every KD search tunes; the slice plot shows those searched.
SLICE_PARAMS = ("temperature", "alpha")
#: Report figure name -> the Optuna plot function (same name in matplotlib and plotly flavours).
PLOTS = {
    "optimization_history": "plot_optimization_history",
    "learning_curves": "plot_intermediate_values",  # pruned trials show as curves that stop
    "param_importances": "plot_param_importances",
    "slice": "plot_slice",
}
#: (val accuracy, test accuracy, parameter count) per compared student.
Row = tuple[Any, Any, Any]


class Skip(Exception):
    """A figure that does not apply to this study; its message becomes a note in report.md."""


def compare_baseline(study: optuna.Study, complete: list[FrozenTrial]) -> dict[str, Row]:
    """The best trial beside the no-distillation student, which is what KD must beat.

    The baseline is the study's ``baseline`` attribute (trained with the best trial's other
    hyperparameters), else the best complete trial that searched alpha = 0.
    """
    if not complete:
        raise Skip("no complete trial yet")
    best = study.best_trial
    keys = ("val_accuracy", "test_accuracy", "student_params")
    out = {f"best (trial {best.number})": (best.value, *(best.user_attrs.get(k) for k in keys[1:]))}
    base = study.user_attrs.get("baseline")
    if isinstance(base, dict):
        out["baseline (alpha=0)"] = tuple(base.get(k) for k in (*keys[:2], "parameters"))
        return out
    plain = [t for t in complete if t.params.get("alpha") == 0]
    if not plain:
        raise Skip("no `baseline` study attribute and no complete trial with alpha = 0")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    t = (max if maximize else min)(plain, key=lambda t: t.value)
    out[f"alpha=0 (trial {t.number})"] = (t.value, *(t.user_attrs.get(k) for k in keys[1:]))
    return out


def _bar_chart(rows: dict[str, Row]) -> Any:
    _, ax = plt.subplots(figsize=(6.4, 4.8))
    width = 0.8 / len(rows)
    for i, (label, (val, test, _)) in enumerate(rows.items()):
        ys = [math.nan if v is None else v for v in (val, test)]
        bars = ax.bar(np.arange(2) + (i - (len(rows) - 1) / 2) * width, ys, width, label=label)
        ax.bar_label(bars, fmt="%.4f", padding=2)
    ax.set_xticks(range(2), ["validation accuracy", "test accuracy"])
    ax.set_ylim(0, 1.1)
    ax.set_title("Best trial vs. the no-distillation baseline")
    ax.legend(loc="lower right")
    return ax


def _plot(module: Any, name: str, study: optuna.Study, slices: list[str]) -> Any:
    """Optuna's plot ``name`` from ``module`` (matplotlib or plotly), or :class:`Skip` when it
    would be empty or meaningless."""
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    need = {"optimization_history": 1, "param_importances": 2, "slice": 1}.get(name, 0)
    if complete < need:
        raise Skip(f"needs at least {need} complete trials (have {complete})")
    if name == "learning_curves" and not any(t.intermediate_values for t in trials):
        raise Skip("no trial has reported an epoch yet")
    if name == "slice" and not slices:
        raise Skip(f"none of {', '.join(SLICE_PARAMS)} is searched")
    fn = getattr(module, PLOTS[name])
    try:
        return fn(study, params=slices) if name == "slice" else fn(study)
    except Exception as err:  # importance evaluation may fail on a degenerate study
        if name != "param_importances":
            raise
        raise Skip(f"Optuna could not rank the parameters: {type(err).__name__}: {err}") from None


def _html(study: optuna.Study, out: Path, drawn: list[str], slices: list[str]) -> list[Path]:
    """Interactive plotly versions of the Optuna figures drawn, if plotly is installed."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return []
    import optuna.visualization as ov

    paths = []
    for name in (n for n in drawn if n in PLOTS):
        with contextlib.suppress(Skip), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # One plotly.min.js beside the pages rather than 3 MB in each; they open offline.
            fig = _plot(ov, name, study, slices)
            fig.write_html(out / f"{name}.html", include_plotlyjs="directory")
            paths.append(out / f"{name}.html")
    return paths


def _skip(why: str) -> Any:
    raise Skip(why)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "n/a" if v is None else str(v)


def _spec_lines(spec: Spec) -> list[str]:
    s, t = spec.search, spec.train
    lines = [
        f"- data set: {spec.dataset.name}, labeled fraction {spec.dataset.labeled_fraction:g}",
        f"- student: {spec.student.arch} {spec.student.kwargs}",
        f"- teacher: {f'{spec.teacher.arch} {spec.teacher.kwargs}' if spec.teacher else 'none'}",
        f"- training: {t.epochs} epochs, batch {t.batch_size}, {t.optimizer.name} "
        f"lr {t.optimizer.lr:g}; distill {spec.distill.loss}",
        f"- search: {s.direction}, {s.n_trials} trials, sampler {s.sampler}, pruner {s.pruner}",
    ]
    for name, p in s.space.items():
        where = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]"
        lines.append(f"  - `{name}`: {p.type} {where}{' log' if p.log else ''}")
    return lines


def draw(
    study: optuna.Study, out: Path, slices: list[str], rows: dict[str, Row], why: str
) -> tuple[list[str], list[str]]:
    """Write each figure that applies as PNG; returns the names drawn and notes on the rest."""
    drawn: list[str] = []
    notes: list[str] = []
    for name in [*PLOTS, "baseline"]:
        try:
            if name == "baseline":
                ax = _bar_chart(rows) if rows else _skip(why)
            else:
                # Wider than the default so the slice plot's two panels have room.
                with warnings.catch_warnings(), plt.rc_context({"figure.figsize": (9.6, 4.8)}):
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    ax = _plot(ovm, name, study, slices)
            for one in np.ravel(ax):  # slice plots return an array of Axes, one per parameter
                if one.get_xscale() == "log":  # "2×10⁰ 3×10⁰ ..." labels overlap; write "2 3 ..."
                    one.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            np.ravel(ax)[0].figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            drawn.append(name)
        except Skip as err:
            notes.append(f"- {name}: skipped, {err}")
        finally:
            plt.close("all")
    return drawn, notes


def write_report(study: optuna.Study, spec: Spec, out: Path) -> list[Path]:
    """Draw the figures and write report.md beside them; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    try:
        rows, why = compare_baseline(study, complete), ""
    except Skip as err:
        rows, why = {}, str(err)
    slices = [p for p in SLICE_PARAMS if any(p in t.params for t in complete)]
    drawn, notes = draw(study, out, slices, rows, why)
    html = _html(study, out, drawn, slices)
    counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
    md = [f"# Study `{study.study_name}`", "", summary, "", "## Spec", "", *_spec_lines(spec), ""]
    if complete:
        best = study.best_trial
        md += ["## Best trial", "", f"- trial {best.number}, value {best.value:.4f}"]
        md += [f"- test accuracy {_fmt(best.user_attrs.get('test_accuracy'))}"]
        md += [f"- student parameters {_fmt(best.user_attrs.get('student_params'))}"]
        md += [f"- `{k}` = {_fmt(v)}" for k, v in best.params.items()] + [""]
    if rows:
        md += ["## Against the baseline", "", "| | val accuracy | test accuracy | parameters |"]
        md += [
            "|---|---|---|---|",
            *(f"| {k} | {' | '.join(map(_fmt, v))} |" for k, v in rows.items()),
            "",
        ]
    md += ["## Figures", "", *(f"![{n}]({n}.png)\n" for n in drawn)]
    md += [f"- interactive: [{p.stem}]({p.name})" for p in html]
    md += ["", "Skipped:", "", *notes, ""] if notes else [""]
    table = export.trials_table(study).drop(columns=["checkpoint"], errors="ignore").head(20)
    md += ["## Trials (best 20)", "", table.to_markdown() if len(table) else "no trials yet", ""]
    (out / "report.md").write_text("\n".join(md))
    return [*(out / f"{n}.png" for n in drawn), *html, out / "report.md"]


def main(a: argparse.Namespace) -> int:
    """``kdsearch report``: write the report, print each path written."""
    storage = storages.open_storage(storages.resolve_url(a.storage), existing=True)
    spec = studies.load_spec(storage, a.study)  # also rejects a study kdsearch did not create
    study = optuna.load_study(study_name=a.study, storage=storage)
    out = Path(a.output) if a.output else Path("reports") / a.study
    for path in write_report(study, spec, out):
        print(f"wrote {path}")
    return 0
