"""Racing (kdsearch/search/racing.py) on synthetic seeds: where it spends confirmation runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch.search.racing import Policy, contenders, next_round, race

#: Two configurations a seed-noise apart and one ten points behind, four seeds each.
TIED_A = [0.80, 0.81, 0.79, 0.80]
TIED_B = [0.80, 0.79, 0.81, 0.80]
WORSE = [0.70, 0.71, 0.69, 0.70]


def new_runs(seen: list[list[float]]) -> list[int]:
    """Confirmation runs per configuration (the search trial's own not counted)."""
    return [len(values) - 1 for values in seen]


def test_round_one_gives_each_of_the_top_one_seed() -> None:
    assert next_round([[0.80], [0.80], [0.70], [0.60]], Policy(top=3)) == [0, 1, 2]


def test_round_one_is_finished_before_anyone_is_dropped() -> None:
    """A top configuration not yet confirmed gets its seed even if its one value is behind."""
    assert next_round([TIED_A[:2], TIED_B[:2], WORSE[:1]], Policy()) == [2]


def test_tied_configurations_get_more_seeds_and_a_clearly_worse_one_none() -> None:
    assert next_round([TIED_A[:2], TIED_B[:2], WORSE[:2]], Policy()) == [0, 1]
    seen, short = race([TIED_A, TIED_B, WORSE], Policy())
    assert new_runs(seen) == [3, 3, 1]
    assert not short


def test_a_resolved_order_stops_after_round_one() -> None:
    ahead = [0.90, 0.91, 0.89, 0.90]
    seen, short = race([ahead, TIED_B, WORSE], Policy())
    assert new_runs(seen) == [1, 1, 1]
    assert not short


def test_the_cap_on_new_runs_is_respected() -> None:
    seen, _ = race([TIED_A, TIED_B, TIED_A], Policy(cap=4))
    assert sum(new_runs(seen)) == 4
    assert next_round([TIED_A[:2], TIED_B[:2], TIED_A[:1]], Policy(cap=2)) == []
    assert next_round([[0.80], [0.80], [0.70]], Policy(cap=2)) == [0, 1]


def test_ties_stop_at_the_seeds_each_may_have() -> None:
    seen, short = race([TIED_A, TIED_B], Policy(top=2, seeds=2))
    assert new_runs(seen) == [2, 2]
    assert not short


def test_asking_for_a_run_that_was_never_made_stops_and_says_so() -> None:
    seen, short = race([TIED_A[:2], TIED_B[:2]], Policy(top=2, seeds=3))
    assert new_runs(seen) == [1, 1]
    assert short


def test_a_dropped_configuration_comes_back_when_the_lead_melts() -> None:
    """The policy reads the values, not the rounds before: the leaders' bad third seeds put the
    configuration dropped after round 1 back in the race."""
    assert next_round([[0.80, 0.81], [0.80, 0.79], [0.77, 0.78]], Policy()) == [0, 1]
    assert next_round([[0.80, 0.81, 0.70], [0.80, 0.79, 0.70], [0.77, 0.78]], Policy()) == [
        2,
        0,
        1,
    ]


def test_the_committed_replay_is_the_table_in_the_docs() -> None:
    """docs/confidence.md's racing table, from bench/cifar10-subset-05/studies.json."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "bench" / "replay_confirm.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    assert [(r[2], r[3], r[4], r[-1]) for r in rows] == [
        ("15 (750)", "15 (750)", "3, 3, 3, 3, 3", "yes |"),
        ("9 (450)", "9 (450)", "3, 3, 3", "yes |"),
        ("9 (450)", "9 (450)", "3, 3, 3", "yes |"),
        ("9 (450)", "9 (450)", "3, 3, 3", "yes |"),
    ]
    assert "asked for more than exist" not in done.stdout


def test_an_untested_order_keeps_everyone_in_the_race() -> None:
    """Identical seeds: noise 0 is not measured, so nobody is dropped (confidence.py)."""
    assert contenders([[0.80, 0.80], [0.70, 0.70]], 0.05) == [0, 1]


def test_lower_is_better_with_sign_minus_one() -> None:
    assert contenders([WORSE[:2], TIED_A[:2]], 0.05, sign=-1) == [0]
    assert next_round([WORSE[:2], TIED_A[:2]], Policy(top=2), sign=-1) == []


def test_a_configuration_without_its_search_value_is_refused() -> None:
    with pytest.raises(ValueError, match="search trial's value"):
        next_round([[0.8], []], Policy())
