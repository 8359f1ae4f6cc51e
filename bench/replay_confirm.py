"""Fixed confirmation (top K x N seeds) against racing, replayed on committed confirmation runs.

    .venv/bin/python bench/replay_confirm.py [bench/cifar10-subset-05/studies.json] [--level 0.05]

For each study of the file (``bench/study_json.py``'s format) that has confirmation runs, the
fixed policy is what was run: its K confirmed configurations with all their seeds. Racing
(:mod:`kdsearch.search.racing`, top K, at most N new seeds each, the same total cap) is
replayed on the same runs in seed order: a round that picks a configuration takes that
configuration's next committed run, so racing can only "run" seeds that were actually run;
when it asks for one more than exist, the row says so and racing stops at what exists.

Per study: the runs and epochs each policy spends (a run costs ``train.epochs``), the
confirmed winner under each (the best mean over seeds, as ``kdsearch best`` ranks) with its
mean, and whether the two winners are the same configuration. No training, a second or two.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from kdsearch.search import racing
from kdsearch.search.ranking import CONFIRM_OF, SEED

DEFAULT = Path(__file__).resolve().parent / "cifar10-subset-05" / "studies.json"


def confirmed(study: dict[str, Any]) -> list[tuple[dict[str, Any], list[float]]]:
    """The confirmed configurations, best first by their search trial: (search trial, values
    of the search trial then of its complete confirmation runs in seed order)."""
    sign = -1 if study["directions"][0] == "MINIMIZE" else 1
    complete = [t for t in study["trials"] if t["state"] == "COMPLETE"]
    runs: dict[int, dict[int, float]] = {}
    for t in sorted(complete, key=lambda t: t["number"]):
        if CONFIRM_OF in t["user_attrs"]:
            seeds = runs.setdefault(t["user_attrs"][CONFIRM_OF], {})
            seeds.setdefault(t["user_attrs"][SEED], t["values"][0])  # a raced duplicate: first
    found = [t for t in complete if t["number"] in runs]
    found.sort(key=lambda t: -sign * t["values"][0])
    return [
        (t, [t["values"][0], *(v for _, v in sorted(runs[t["number"]].items()))]) for t in found
    ]


def winner(values: list[list[float]], sign: int) -> int:
    """Index of the confirmed winner, ranked as every kdsearch reader ranks (confidence.py)."""
    return racing.contenders(values, racing.Policy.level, sign)[0]


def label(trial: dict[str, Any]) -> str:
    return ", ".join(f"{v:.3g}" for _, v in sorted(trial["params"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="?", default=str(DEFAULT))
    parser.add_argument("--level", type=float, default=racing.Policy.level)
    a = parser.parse_args()
    studies = json.loads(Path(a.studies).read_text())["studies"]
    print(
        "| study | configurations | fixed: runs (epochs) | racing: runs (epochs) | racing's "
        "rounds: runs per configuration | fixed winner: val mean | racing winner: val mean "
        "| same winner |"
    )
    print("|---|---:|---:|---:|---|---|---|---|")
    for study in studies:
        found = confirmed(study)
        if not found:
            continue
        sign = -1 if study["directions"][0] == "MINIMIZE" else 1
        epochs = study["user_attrs"]["kdsearch_spec"]["train"]["epochs"]
        trials = [t for t, _ in found]
        runs = [v for _, v in found]
        seeds = max(len(v) - 1 for v in runs)
        policy = racing.Policy(top=len(runs), seeds=seeds, level=a.level)
        seen, short = racing.race(runs, policy, sign)
        fixed_runs = sum(len(v) - 1 for v in runs)
        race_runs = sum(len(v) - 1 for v in seen)
        fw, rw = winner(runs, sign), winner(seen, sign)
        params = sorted(trials[0]["params"])
        print(
            f"| {study['name']} | top {len(runs)} x {seeds} ({', '.join(params)}) "
            f"| {fixed_runs} ({fixed_runs * epochs:,}) "
            f"| {race_runs} ({race_runs * epochs:,}){' (asked for more than exist)' * short} "
            f"| {', '.join(str(len(v) - 1) for v in seen)} "
            f"| {label(trials[fw])}: {100 * statistics.fmean(runs[fw]):.2f} ({len(runs[fw])}) "
            f"| {label(trials[rw])}: {100 * statistics.fmean(seen[rw]):.2f} ({len(seen[rw])}) "
            f"| {'yes' if fw == rw else 'no'} |"
        )


if __name__ == "__main__":
    main()
