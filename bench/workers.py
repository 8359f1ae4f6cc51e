"""Aggregate training throughput of N worker processes sharing one device, against one worker.

    .venv/bin/python bench/workers.py studies/cifar10_jpg.yaml --device cuda --workers 4
    .venv/bin/python bench/workers.py SPEC --device cpu --workers 2 --set train.epochs=2 --json

Two studies of the spec (pruning off, so every trial trains every epoch) in one SQLite file
under --dir: the first run by one `kdsearch worker`, the second by `--workers` of them, each
worker taking --trials trials. A study's throughput is every trial's training images (epochs
x images, from the trials' own `train_seconds` and `images_per_second`) over the span from the
first trial's start to the last one's end, so process start-up, data loading and the teacher
cache (built by the first study, then read from disk) stay out of it. The one-worker study
also gives the time of one whole trial (start to end, evaluation and checkpoints included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kdsearch import api


def _value(text: str) -> Any:
    """A --set value as YAML reads it (numbers, booleans, mappings)."""
    return yaml.safe_load(text)


def study_figures(url: str, name: str) -> dict[str, Any]:
    """Throughput and trial times of one finished study."""
    import optuna

    trials = optuna.load_study(study_name=name, storage=url).get_trials(
        deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]
    )
    if not trials:
        raise SystemExit(f"bench/workers.py: study {name} finished no trial; see its worker's log")
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    images = sum(t.user_attrs["images_per_second"] * t.user_attrs["train_seconds"] for t in trials)
    whole = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return {
        "trials": len(trials),
        # All times in ms, rounded alike: with one trial its time is the span, and rounding
        # one to 0.01 s and the other to 0.001 s made the smaller one look larger (1.22 > 1.216).
        "span_s": round(span, 3),
        "images": round(images),
        "aggregate_img_s": round(images / span, 1),
        "trial_s_median": round(statistics.median(whole), 3),
        "train_s_median": round(
            statistics.median(t.user_attrs["train_seconds"] for t in trials), 3
        ),
        "per_trial_img_s_median": statistics.median(
            t.user_attrs["images_per_second"] for t in trials
        ),
        "val_accuracy": [round(t.value, 4) for t in trials],
        "test_accuracy": [t.user_attrs["test_accuracy"] for t in trials],
    }


def bench(
    spec_path: str, sets: dict[str, Any], device: str, workers: int, trials: int, folder: Path
) -> dict[str, Any]:
    """Run both studies and return their figures and the ratio of their throughputs."""
    spec = api.validate(
        spec_path, {**sets, "search.pruner": {"name": "none"}, "search.n_trials": 100_000}
    )
    url = f"sqlite:///{folder / 'workers.db'}"
    result: dict[str, Any] = {"spec": spec_path, "overrides": sets, "device": device}
    for n in (1, workers):
        name = f"workers-{n}"
        api.create_study(spec, url, study_name=name)
        cmd = [sys.executable, "-m", "kdsearch", "worker", "--study", name]
        cmd += ["--storage", url, "--n-workers", str(n), "--devices", device]
        subprocess.run([*cmd, "--n-trials", str(trials), "-q"], check=True)
        result[name] = study_figures(url, name)
    one, many = result["workers-1"], result[f"workers-{workers}"]
    result["ratio"] = round(many["aggregate_img_s"] / one["aggregate_img_s"], 2)
    return result


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default cuda)")
    parser.add_argument("--workers", type=int, default=4, help="workers of the second study")
    parser.add_argument("--trials", type=int, default=2, help="trials per worker (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    sets = {key: _value(value) for key, _, value in (s.partition("=") for s in args.set)}
    folder = args.dir or Path(tempfile.mkdtemp(prefix="kdsearch-workers-"))
    folder.mkdir(parents=True, exist_ok=True)
    result = bench(args.spec, sets, args.device, args.workers, args.trials, folder)
    result["device_name"] = _device_name(args.device)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.spec} on {result['device_name']}")
    print("workers  trials  span (s)  aggregate img/s  trial (s, median)  training (s, median)")
    for n in (1, args.workers):
        r = result[f"workers-{n}"]
        print(
            f"{n:>7}  {r['trials']:>6}  {r['span_s']:>8.1f}  {r['aggregate_img_s']:>15,.0f}"
            f"  {r['trial_s_median']:>17.1f}  {r['train_s_median']:>20.1f}"
        )
    print(f"{args.workers} workers / 1 worker = {result['ratio']:.2f}x aggregate images/s")


if __name__ == "__main__":
    main()
