"""``kdsearch report``: PNG figures and a ``report.md`` for one study, read from its database.

Everything comes from the study (trials, user attributes, the stored spec), so any machine
that reaches the storage can report, during a search or after. The best-vs-baseline figure is
always drawn: the alpha = 0 baseline is trained with the best trial's other hyperparameters
and seed when the study has none yet, and stored on it, so it is trained once. A figure that
cannot be drawn (too few trials, say) is skipped with a note in report.md. With
``search.artifact_store`` set, the figures and report.md are also attached to the study, where
optuna-dashboard shows them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna

from kdsearch.config.metrics import LABELS
from kdsearch.config.spec import Spec
from kdsearch.results import dashboard, export, figures
from kdsearch.results.best import BASELINE_ATTR, ensure_baseline
from kdsearch.results.figures import Skip
from kdsearch.search import confidence, ranking
from kdsearch.search import gain as gains
from kdsearch.search import study as studies

#: (validation accuracy, test accuracy) per compared model.
Row = tuple[Any, Any]


def compare_rows(study: optuna.Study, spec: Spec) -> tuple[dict[str, Row], list[str]]:
    """Teacher, alpha = 0 baseline and best distilled student, with notes on what is missing."""
    best = ranking.best(study)
    if best is None:
        raise Skip("no complete trial yet")
    rows: dict[str, Row] = {}
    notes = []
    teacher = dashboard.teacher_attrs(spec)
    if spec.teacher is not None:
        if "teacher_test_accuracy" in teacher:
            val = teacher.get("teacher_val_accuracy")
            rows[f"teacher ({spec.teacher.arch})"] = (val, teacher["teacher_test_accuracy"])
        else:
            notes.append("- teacher: no accuracy recorded in its checkpoint")
    base = study.user_attrs.get(BASELINE_ATTR)
    if isinstance(base, dict):
        source = f"trial {base['from_trial']}'s settings" if "from_trial" in base else "stored"
        rows[f"baseline, alpha = 0 ({source})"] = (
            base.get("val_accuracy"),
            base.get("test_accuracy"),
        )
    elif spec.teacher is not None and not spec.search.baseline:
        notes.append(
            f"- baseline: none yet; `kdsearch best --study {study.study_name} --baseline` "
            "(or `report` without --no-baseline) trains it"
        )
    found = gains.of_study(study)
    if found is not None:
        b = found.baseline
        seeds = f", mean of {b.n} seeds" if b.n > 1 else ""
        rows[f"tuned baseline ({b.study} trial {b.trial}{seeds})"] = (b.val_mean, b.test_mean)
    kind = "distilled" if spec.teacher is not None else "student"
    winner = confidence.rank(study).winner
    assert winner is not None
    seeds = f", mean of {winner.n} seeds" if winner.n > 1 else ""
    rows[f"best {kind} (trial {winner.trial.number}{seeds})"] = (winner.mean, winner.test_mean)
    return rows, notes


def _gain_lines(study: optuna.Study) -> list[str]:
    """The gain over the tuned baseline arm, when the study has one (``search.baseline``)."""
    arm = study.user_attrs.get(studies.BASELINE_STUDY_ATTR)
    if arm is None:
        return []
    head = ["## Gain over the tuned baseline", ""]
    found = gains.of_study(study)
    if found is None:
        return [*head, f"None yet: `{arm}` has no complete trial.", ""]
    said = found.sentence()
    md = [*head, f"{said[0].upper()}{said[1:]}.", ""]
    md += ["| | points | 95% interval |", "|---|---:|---:|"]
    md += [f"| validation accuracy | {100 * found.val_gain:+.2f} | {_points(found.val_ci95)} |"]
    if found.test_gain is not None:
        md += [f"| test accuracy | {100 * found.test_gain:+.2f} | {_points(found.test_ci95)} |"]
    verdict = "yes, the interval leaves out 0" if found.resolved else "no, the interval holds 0"
    return [*md, "", f"Resolved: {verdict}.", ""]


def _points(half_width: float | None) -> str:
    return "n/a" if half_width is None else f"± {100 * half_width:.2f}"


def draw(study: optuna.Study, spec: Spec, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Write each figure that applies as PNG; returns the names drawn, notes on the skipped
    ones, and notes on the comparison."""
    extra: list[str] = []

    def comparison() -> Any:
        rows, notes = compare_rows(study, spec)
        extra.extend(notes)
        return figures.comparison(rows, f"{study.study_name}: teacher, baseline and best student")

    makers = {
        "optimization_history": lambda: figures.history(study),
        "learning_curves": lambda: figures.learning_curves(study),
        "slice": lambda: figures.slices(study, list(spec.search.space)),
        "param_importances": lambda: figures.importances(study),
        "baseline": comparison,
        "confidence": lambda: figures.confidence(confidence.rank(study)),
    }
    if len(spec.search.objectives) > 1:  # one objective has no trade-off to draw
        makers["pareto_front"] = lambda: figures.pareto_front(study, spec.search.objectives, LABELS)
    drawn: list[str] = []
    skipped: list[str] = []
    for name, make in makers.items():
        try:
            make().savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
            drawn.append(name)
        except Skip as err:
            skipped.append(f"- {name}: skipped, {err}")
        finally:
            plt.close("all")
    return drawn, skipped, extra


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else "n/a" if v is None else str(v)


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _spec_lines(spec: Spec) -> list[str]:
    """What a reader needs to reproduce the numbers: where the data came from and at what
    size and share, the nets, the training and the search."""
    s, t, d = spec.search, spec.train, spec.dataset
    lines = [
        f"- data set: {d.name} from `{d.root}`, image size "
        f"{d.image_size or 'native'}, subset fraction {d.subset_fraction:g}, "
        f"labeled fraction {d.labeled_fraction:g}",
        f"- student: {spec.student.arch} {spec.student.kwargs}",
        f"- teacher: {f'{spec.teacher.arch} {spec.teacher.kwargs}' if spec.teacher else 'none'}",
        f"- training: {t.epochs} epochs, batch {t.batch_size}, {t.optimizer.name} "
        f"lr {t.optimizer.lr:g}; distill {spec.distill.loss}",
        f"- search: {s.direction}, {s.n_trials} trials, sampler {s.sampler}, pruner {s.pruner}",
        f"- objectives: {', '.join(s.objectives)}"
        + "".join(f"; {m} <= {c['max']:g}" for m, c in s.constraints.items()),
    ]
    for name, p in s.space.items():
        where = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]"
        lines.append(f"  - `{name}`: {p.type} {where}{' log' if p.log else ''}")
    return lines


def _spread(values: list[float], std: float | None) -> str:
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    return f"{mean:.4f}" + (f" ± {std:.4f} (n={len(values)})" if std is not None else "")


def _best_lines(ranked: confidence.Ranking) -> list[str]:
    """The best configuration, its spread over seeds, and the study's noise in words."""
    top = ranked.rows[0]
    c = top.configuration
    md = ["## Best configuration", "", f"- trial {c.trial.number}"]
    md += [f"- validation accuracy {_spread(c.values, c.std)}"]
    if top.ci95 is not None:
        md[-1] += f", 95% interval ± {top.ci95:.4f}"
    md += [f"- test accuracy {_spread(c.tests, c.test_std)}"]
    md += [f"- student parameters {_fmt(c.trial.user_attrs.get('student_params'))}"]
    md += [f"- `{k}` = {_fmt(v)}" for k, v in c.trial.params.items()]
    md += ["", f"Confidence: {ranked.summary()}.", ""]
    if ranked.tested:
        table = export.readable(export.configurations_table_of(ranked).head(10))
        md += ["### Configurations (best 10 by mean)", ""]
        md += [table.to_markdown(index=False, disable_numparse=True), ""]
    return md


def write_report(study: optuna.Study, spec: Spec, out: Path) -> list[Path]:
    """Draw the figures and write report.md beside them; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    ranked = confidence.rank(study)
    drawn, skipped, extra = draw(study, spec, out)
    counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
    md = [f"# Study `{study.study_name}`", "", summary, "", "## Spec", "", *_spec_lines(spec), ""]
    if ranked.rows:
        md += _best_lines(ranked)
        rows, _ = compare_rows(study, spec)
        md += ["## Against the teacher and the baseline", "", "| | val accuracy | test accuracy |"]
        md += ["|---|---|---|", *(f"| {k} | {' | '.join(map(_acc, v))} |" for k, v in rows.items())]
        md += ["", *extra, ""]
    md += _gain_lines(study)
    md += ["## Figures", "", *(f"![{n}]({n}.png)\n" for n in drawn)]
    md += ["Skipped:", "", *skipped, ""] if skipped else [""]
    table = export.trials_frame(study).drop(columns=["checkpoint"], errors="ignore").head(20)
    shown = export.readable(table).to_markdown(index=False, disable_numparse=True)
    md += ["## Trials (best 20)", "", shown if len(table) else "no trials yet", ""]
    (out / "report.md").write_text("\n".join(md))
    return [*(out / f"{n}.png" for n in drawn), out / "report.md"]


def make_report(
    name: str,
    url: str | None = None,
    *,
    out: Path | None = None,
    baseline: bool = True,
    device: str | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[list[Path], list[str]]:
    """Write study ``name``'s report to ``out`` (default: reports/<name>).

    Returns the paths written, and each file attached to the study as "<file> to study
    <name> in <artifact store>".
    ``baseline`` trains the alpha = 0 baseline first if the study has none; ``say`` hears
    about that before it starts, since it takes as long as a trial, and of every file written
    and attached at the end.
    """
    study, spec = studies.open_study(name, url)
    studies.check_files_safe(study)  # the name becomes reports/<name>
    dashboard.describe(study, spec)  # the teacher may have been trained after create-study
    if baseline and ranking.complete(study) and not spec.search.baseline:
        if BASELINE_ATTR not in study.user_attrs:
            say("training the alpha = 0 baseline with the best trial's settings")
        ensure_baseline(study, spec, device)
    paths = write_report(study, spec, out or Path("reports") / name)
    files = {p.name: p.read_bytes() for p in paths}
    store = spec.search.artifact_store
    attached = [
        f"{file} to study {name} in {store}" for file in dashboard.attach(study, store, files)
    ]
    for path in paths:
        say(f"wrote {path}")
    for line in attached:
        say(f"attached {line}")
    return paths, attached
