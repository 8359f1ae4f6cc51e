"""The report's figures say what a reader needs: percent, epochs from 1, pruned trials marked,
every searched parameter, distinct neighbouring colours, importances only with enough trials.

The study is built in real (in-memory) Optuna storage from hand-made trials, so the checks
read the drawn matplotlib objects without any training.
"""

from __future__ import annotations

import random

import matplotlib.colors as mcolors
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from kdsearch.results import figures

FLOAT = optuna.distributions.FloatDistribution
DISTS = {
    "alpha": FLOAT(0, 1),
    "temperature": FLOAT(1, 10, log=True),
    "lr": FLOAT(1e-4, 1e-2, log=True),
    "dropout": FLOAT(0, 0.5),
}
PRUNED = {3, 7, 11}


def make_study(n: int = 14) -> optuna.Study:
    """``n`` trials of 5 epochs; those in PRUNED stop after 2."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="unit")
    rng = random.Random(0)
    for i in range(n):
        params = {
            "alpha": rng.random(),
            "temperature": 10 ** rng.random(),
            "lr": 10 ** (-4 + 2 * rng.random()),
            "dropout": rng.random() / 2,
        }
        pruned = i in PRUNED
        curve = {e: 0.3 + 0.1 * e + 0.05 * rng.random() for e in range(2 if pruned else 5)}
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else max(curve.values()),
                params=params,
                distributions=DISTS,
                intermediate_values=curve,
            )
        )
    return study


def test_neighbouring_trials_never_share_a_colour() -> None:
    for n in range(60):
        assert mcolors.to_hex(figures.colour(n)) != mcolors.to_hex(figures.colour(n + 1))


def test_learning_curves_in_percent_against_epochs_from_one() -> None:
    study = make_study()
    ax = figures.learning_curves(study).axes[0]
    lines = ax.get_lines()
    assert len(lines) == 14
    assert all(line.get_xdata()[0] == 1 for line in lines)
    assert max(max(line.get_ydata()) for line in lines) > 50  # percent, not fractions
    assert [line.get_linestyle() for line in lines].count(":") == len(PRUNED)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "validation accuracy")
    ends = {tuple(c.get_offsets()[0]) for c in ax.collections}  # the x where pruned curves stop
    assert len(ends) == len(PRUNED) and all(x == 2 for x, _ in ends)


def test_history_marks_pruned_trials() -> None:
    ax = figures.history(make_study()).axes[0]
    points = {int(c.get_offsets()[0][0]): c for c in ax.collections}
    assert sorted(points) == list(range(14))  # pruned trials are drawn too
    markers = {n: c.get_paths()[0].vertices.shape for n, c in points.items()}
    assert len({markers[n] for n in PRUNED}) == 1 and markers[3] != markers[0]
    assert ax.get_ylabel() == "validation accuracy"
    assert ax.get_legend() is not None


def test_slices_show_every_searched_parameter() -> None:
    fig = figures.slices(make_study(), list(DISTS))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel().split(" ")[0] for ax in visible] == list(DISTS)
    assert visible[1].get_xscale() == "log"
    assert all(len(ax.collections) == 14 for ax in visible)


def test_importances_need_ten_complete_trials() -> None:
    with pytest.raises(figures.Skip, match=r"at least 10 complete trials .*\(have 9\)"):
        figures.importances(make_study(12))  # 12 trials, 3 pruned
    ax = figures.importances(make_study(14)).axes[0]
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(DISTS)
    assert "11 complete trials" in ax.get_title()


def test_comparison_shows_missing_numbers_as_such() -> None:
    rows = {"teacher": (0.9, 0.85), "baseline": (0.7, None), "best distilled": (0.8, 0.75)}
    ax = figures.comparison(rows, "t").axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(heights, [90, 85, 70, np.nan, 80, 75], equal_nan=True)
    assert "n/a" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(rows)
