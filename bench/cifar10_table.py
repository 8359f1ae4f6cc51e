"""Run the cells of docs/cifar10.md's CNN and partial-label tables, and print those tables.

    .venv/bin/python bench/cifar10_table.py list                    # every cell's command
    .venv/bin/python bench/cifar10_table.py run --jobs 2 [--cells d0-base d0-ks] [--seeds 0,1,2]
    .venv/bin/python bench/cifar10_table.py table                   # mean ± std per cell
    python3 bench/cifar10_table.py run --jobs 4 --device cuda \
        --set distill.teacher_cache=all_views --results DIR         # on a GPU (bench/gpu_check.sh)

Each cell is one ``kdsearch train studies/cifar10_jpg.yaml`` with fixed overrides, run once per
seed on one torch thread (the box's cores go to parallel cells, which is faster on a CPU than
threads within one). A finished run leaves ``bench/cifar10-runs/<cell>-s<seed>.json``
(kdsearch's ``--json`` result plus the command and wall time; committed, so the tables can be
rebuilt from them), and ``run`` skips runs that have one, so an interrupted table resumes
where it stopped. Needs the unpacked JPEG copy and the fine-tuned
teacher (docs/cifar10.md, section 1). On this project's 2-core CPU box one run takes 35–60
minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

SPEC = "studies/cifar10_jpg.yaml"
RESULTS = Path("bench/cifar10-runs")

#: docs/cifar10.md's cells: dropout 0.5 ("d05") and none ("d0") at the baseline, the
#: reference's own point and kdsearch's point (section 3's median search); 5 % of the labels
#: ("part"), baseline and distilled at the 5 % subset grid's best point.
CELLS: dict[str, dict[str, float]] = {
    "d05-base": {"student.kwargs.dropout": 0.5, "distill.alpha": 0.0},
    "d05-kd": {"student.kwargs.dropout": 0.5, "distill.alpha": 0.95, "distill.temperature": 2},
    "d05-ks": {"student.kwargs.dropout": 0.5, "distill.alpha": 0.793, "distill.temperature": 17.9},
    "d0-base": {"student.kwargs.dropout": 0.0, "distill.alpha": 0.0},
    "d0-kd": {"student.kwargs.dropout": 0.0, "distill.alpha": 0.5, "distill.temperature": 1.5},
    "d0-ks": {"student.kwargs.dropout": 0.0, "distill.alpha": 0.793, "distill.temperature": 17.9},
    "part-base": {
        "dataset.labeled_fraction": 0.05,
        "student.kwargs.dropout": 0.0,
        "distill.alpha": 0.0,
    },
    "part-kd": {
        "dataset.labeled_fraction": 0.05,
        "student.kwargs.dropout": 0.0,
        "distill.alpha": 0.95,
        "distill.temperature": 8,
    },
}


def command(cell: str, seed: int, extra: list[str], device: str | None) -> list[str]:
    """The ``kdsearch train`` command line of one cell and seed.

    ``extra`` are further KEY=VALUE overrides for every cell (a GPU run's cache mode, say).
    """
    sets = [f"--set={key}={value}" for key, value in CELLS[cell].items()]
    sets += [f"--set={item}" for item in extra]
    out = f"models/cifar10/{cell}-s{seed}.pt"
    where = ["--device", device] if device else []
    cmd = ["kdsearch", "train", SPEC, *sets, f"--set=train.seed={seed}", *where]
    return [*cmd, "--out", out, "--json"]


def _utc(seconds: float) -> str:
    """A wall-clock time as the runs' JSON files record it (the date tells which session, and
    so which teacher fine-tune, a run belongs to: docs/cifar10.md, section 1)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def run_one(cmd: list[str], result: Path, threads: int) -> str:
    """Run one cell's command into its JSON result; a line saying how it went."""
    cell, seed = result.stem.rsplit("-s", 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KDSEARCH_THREADS": str(threads)}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{cell} seed {seed}: failed: {last}"
    data = json.loads(proc.stdout)
    data.update(
        command=" ".join(cmd),
        wall_seconds=round(time.time() - start, 1),
        started_utc=_utc(start),
        ended_utc=_utc(time.time()),
    )
    result.write_text(json.dumps(data, indent=1))
    return f"{cell} seed {seed}: test {data['test_accuracy']:.4f} in {data['wall_seconds']:.0f} s"


def load(results: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Every finished run, by cell and seed."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(results.glob("*-s*.json")):
        cell, seed = path.stem.rsplit("-s", 1)
        runs.setdefault(cell, {})[int(seed)] = json.loads(path.read_text())
    return runs


def _join(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def table(runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Markdown: each cell's test accuracies by seed, their mean ± std, and validation."""
    lines = [
        "| cell | seeds | test accuracy (%) | mean ± std | val accuracy (%) | wall (min) |",
        "|---|---|---|---:|---|---|",
    ]
    for cell in CELLS:
        done = runs.get(cell, {})
        if not done:
            continue
        seeds = sorted(done)
        tests = [100 * done[s]["test_accuracy"] for s in seeds]
        vals = [100 * done[s]["val_accuracy"] for s in seeds]
        walls = [done[s]["wall_seconds"] / 60 for s in seeds]
        mean = f"{statistics.mean(tests):.2f}"
        if len(tests) > 1:
            mean += f" ± {statistics.stdev(tests):.2f}"
        lines.append(
            f"| {cell} | {', '.join(map(str, seeds))} | {_join(tests, '.2f')} | {mean} "
            f"| {_join(vals, '.2f')} | {_join(walls, '.0f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "run", "table"])
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the spec's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further override for every cell",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help=f"folder of the runs' JSON files (default {RESULTS})",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [(c, s) for s in seeds for c in args.cells]
    if args.action == "list":
        for cell, seed in todo:
            print(" ".join(command(cell, seed, args.set, args.device)))
    elif args.action == "table":
        print(table(load(args.results)))
    else:
        args.results.mkdir(parents=True, exist_ok=True)
        jobs = [
            (command(c, s, args.set, args.device), args.results / f"{c}-s{s}.json", args.threads)
            for c, s in todo
            if not (args.results / f"{c}-s{s}.json").exists()
        ]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for done in as_completed([pool.submit(run_one, *job) for job in jobs]):
                print(done.result(), flush=True)


if __name__ == "__main__":
    main()
