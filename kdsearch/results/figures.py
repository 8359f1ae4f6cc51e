"""The report's figures, drawn for a reader rather than with Optuna's generic defaults.

Every accuracy is validation accuracy in percent, every epoch is counted from 1, pruned trials
are drawn (an ``x`` where they stopped) instead of left out, and each trial keeps one colour
across figures from a qualitative palette, so neighbouring trials never share a hue. Each
function returns a matplotlib Figure, or raises :class:`Skip` with the reason it does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers, and no GUI windows left open

import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

#: Fewer complete trials than this give importances that are mostly noise.
MIN_IMPORTANCE_TRIALS = 10
#: Up to this many trials, each curve and point carries its trial number.
LABEL_LIMIT = 30
#: tab10 without its grey: 9 hues, so trials n and n+1 always differ.
PALETTE = [c for i, c in enumerate(matplotlib.color_sequences["tab10"]) if i != 7]
PRUNED_MARK = Line2D([], [], color="black", marker="x", linestyle="none", label="pruned (stopped)")


class Skip(Exception):
    """A figure that does not apply to this study; its message becomes a note in report.md."""


def colour(number: int) -> Any:
    return PALETTE[number % len(PALETTE)]


def pct(v: float) -> float:
    return 100.0 * v


def reached(t: FrozenTrial) -> tuple[int, float] | None:
    """(epoch counted from 1, validation accuracy) of the trial's last reported epoch."""
    if not t.intermediate_values:
        return None
    step = max(t.intermediate_values)
    return step + 1, t.intermediate_values[step]


def shown(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials and pruned ones that reported at least one epoch."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE or (t.state == TrialState.PRUNED and reached(t))
    ]


def accuracy_of(t: FrozenTrial) -> float:
    """A complete trial's value, a pruned trial's last reported accuracy."""
    if t.state == TrialState.COMPLETE:
        return t.values[0]
    last = reached(t)
    assert last is not None  # shown() drops the pruned trials that reported no epoch
    return last[1]


def _legend_below(ax: Any, handles: list[Any]) -> None:
    """A legend under the axes: inside them it hides the points it explains."""
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncols=len(handles),
        frameon=False,
    )


def _percent_axis(ax: Any, axis: str = "y") -> None:
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(ticker.PercentFormatter(100))


def history(study: optuna.Study) -> Figure:
    """Each trial's validation accuracy in the order run, pruned trials at their last epoch,
    and the best so far."""
    trials = shown(study.get_trials(deepcopy=False))
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise Skip("no complete trial yet")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    best, steps = -math.inf, []
    for t in trials:
        pruned = t.state == TrialState.PRUNED
        y = pct(accuracy_of(t))
        ax.scatter(t.number, y, color=colour(t.number), marker="x" if pruned else "o", s=40)
        if not pruned and sign * t.values[0] > best:
            best = sign * t.values[0]
        if best > -math.inf:
            steps.append((t.number, pct(sign * best)))
    ax.step(*zip(*steps, strict=True), where="post", color="black", lw=1.2, label="best so far")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _percent_axis(ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    done = Line2D([], [], color="black", marker="o", linestyle="none", label="complete")
    _legend_below(ax, [done, PRUNED_MARK, *ax.get_legend_handles_labels()[0]])
    ax.set_title(f"{study.study_name}: validation accuracy per trial")
    ax.grid(alpha=0.3)
    return fig


def learning_curves(study: optuna.Study) -> Figure:
    """Validation accuracy per epoch of every trial; a pruned curve ends in an ``x``."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise Skip("no trial has reported an epoch yet")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for t in trials:
        steps = sorted(t.intermediate_values)
        xs = [s + 1 for s in steps]
        ys = [pct(t.intermediate_values[s]) for s in steps]
        pruned = t.state == TrialState.PRUNED
        ax.plot(xs, ys, color=colour(t.number), lw=1.4, ls=":" if pruned else "-", alpha=0.9)
        if pruned:
            ax.scatter(xs[-1], ys[-1], color=colour(t.number), marker="x", s=50, zorder=3)
        if len(trials) <= LABEL_LIMIT:
            ax.annotate(
                str(t.number),
                (xs[-1], ys[-1]),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=7,
                color=colour(t.number),
            )
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    _percent_axis(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    done = Line2D([], [], color="black", lw=1.4, label="complete")
    stopped = Line2D([], [], color="black", lw=1.4, ls=":", marker="x", label="pruned (stopped)")
    _legend_below(ax, [done, stopped])
    ax.set_title(f"{study.study_name}: learning curves (numbers are trials)")
    ax.grid(alpha=0.3)
    return fig


def slices(study: optuna.Study, params: list[str]) -> Figure:
    """Validation accuracy against each searched parameter, one panel per parameter."""
    trials = shown(study.get_trials(deepcopy=False))
    params = [p for p in params if any(p in t.params for t in trials)]
    if not params or not any(t.state == TrialState.COMPLETE for t in trials):
        raise Skip("no complete trial with a searched parameter yet")
    cols = min(len(params), 3)
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, sharey=True
    )
    for ax, name in zip(axes.flat, params, strict=False):
        dist = next(t.distributions[name] for t in trials if name in t.distributions)
        choices = dist.choices if isinstance(dist, CategoricalDistribution) else None
        for t in (t for t in trials if name in t.params):
            x = choices.index(t.params[name]) if choices is not None else t.params[name]
            pruned = t.state == TrialState.PRUNED
            y = pct(accuracy_of(t))
            ax.scatter(x, y, color=colour(t.number), marker="x" if pruned else "o", s=36)
            if len(trials) <= LABEL_LIMIT:
                ax.annotate(
                    str(t.number),
                    (x, y),
                    xytext=(3, 2),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour(t.number),
                )
        if choices is not None:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        elif getattr(dist, "log", False):
            ax.set_xscale("log")
            # Ticks at 1, 2, 5 per decade: one decade or less still gets several labels.
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(name + (" (log scale)" if getattr(dist, "log", False) else ""))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        _percent_axis(ax)
        ax.set_ylabel("validation accuracy")
    for ax in axes.flat[len(params) :]:
        ax.set_visible(False)
    done = Line2D([], [], color="black", marker="o", linestyle="none", label="complete")
    fig.legend(handles=[done, PRUNED_MARK], loc="upper right", ncols=2)
    fig.suptitle(
        f"{study.study_name}: accuracy against each searched parameter "
        "(x: pruned, at its last epoch)",
        x=0.02,
        ha="left",
    )
    fig.tight_layout()
    return fig


def importances(study: optuna.Study) -> Figure:
    """fANOVA importances, only once enough trials make them more than noise."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise Skip(
            f"needs at least {MIN_IMPORTANCE_TRIALS} complete trials to rank parameters "
            f"(have {len(complete)})"
        )
    try:
        # Accuracy's importance, also in a study with cost objectives.
        accuracy = (lambda t: t.values[0]) if len(study.directions) > 1 else None
        ranked = optuna.importance.get_param_importances(study, target=accuracy)
    except Exception as err:  # a degenerate study (one value everywhere) cannot be ranked
        raise Skip(f"Optuna could not rank the parameters: {type(err).__name__}: {err}") from None
    names = list(ranked)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.6))
    bars = ax.barh(names, [100 * ranked[n] for n in names], color=PALETTE[0])
    ax.bar_label(bars, fmt="%.0f%%", padding=3)
    _percent_axis(ax, "x")
    ax.set_xlim(0, 110)
    ax.set_xlabel("share of the variance in validation accuracy (fANOVA)")
    ax.set_title(f"{study.study_name}: parameter importance ({len(complete)} complete trials)")
    return fig


def pareto_front(study: optuna.Study, objectives: list[str], labels: dict[str, str]) -> Figure:
    """Optuna's Pareto-front plot of a study with two or three objectives, axes named."""
    import warnings

    if not 2 <= len(objectives) <= 3:
        raise Skip(f"{len(objectives)} objective(s): a front is drawn for two or three")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise Skip("no complete trial yet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_pareto_front(
            study, target_names=[labels.get(o, o) for o in objectives]
        )
    ax.set_title(f"{study.study_name}: Pareto front (red: non-dominated trials)")
    assert isinstance(ax.figure, Figure)  # plot_pareto_front draws a figure of its own
    return ax.figure


def comparison(rows: dict[str, tuple[float | None, float | None]], title: str) -> Figure:
    """Validation and test accuracy side by side for teacher, baseline and best student."""
    if not rows:
        raise Skip("nothing to compare")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    width = 0.8 / len(rows)
    for i, (label, accs) in enumerate(rows.items()):
        ys = [math.nan if v is None else pct(v) for v in accs]
        xs = np.arange(2) + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(xs, ys, width, label=label, color=PALETTE[i])
        ax.bar_label(bars, labels=[f"{y:.2f}%" for y in ys], padding=2, fontsize=8)
        for x, y in zip(xs, ys, strict=True):
            if math.isnan(y):  # a missing bar must say so, not look like 0 %
                ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=8, color=PALETTE[i])
    ax.set_xticks(range(2), ["validation", "test"])
    _percent_axis(ax)
    ax.set_ylim(0, 112)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    _legend_below(ax, ax.get_legend_handles_labels()[0])
    return fig


def confidence(ranked: Any, top: int = 10) -> Figure:
    """The best configurations' mean validation and test accuracy over seeds, with 95 %
    intervals (validation: the study's pooled seed noise; test: each configuration's own
    spread), the winner on top and the configurations tied with it marked."""
    from scipy import stats

    rows = ranked.rows[:top]
    if not ranked.tested:
        raise Skip("one seed per configuration: no spread to draw (add search.confirm)")
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.45 * len(rows)))
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows, strict=True):
        c = r.configuration
        ax.errorbar(pct(c.mean), y + 0.12, xerr=pct(r.ci95), fmt="o", color=PALETTE[0])
        if c.test_mean is not None:
            half = 0.0
            if c.test_std is not None:
                half = stats.t.ppf(0.975, len(c.tests) - 1) * c.test_std / math.sqrt(len(c.tests))
            ax.errorbar(pct(c.test_mean), y - 0.12, xerr=pct(half), fmt="s", color=PALETTE[1])
    labels = []
    for r in rows:
        mark = " (best)" if r.rank == 1 else " (tied)" if r.tied else ""
        labels.append(f"trial {r.configuration.trial.number}, n={r.configuration.n}{mark}")
    ax.set_yticks(ys, labels)
    _percent_axis(ax, "x")
    ax.set_xlabel("accuracy, mean over seeds ± 95% interval")
    ax.set_title("best configurations: validation (circles) and test (squares)")
    handles = [
        Line2D([], [], color=PALETTE[0], marker="o", linestyle="none", label="validation"),
        Line2D([], [], color=PALETTE[1], marker="s", linestyle="none", label="test"),
    ]
    _legend_below(ax, handles)
    return fig
