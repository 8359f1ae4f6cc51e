"""Training images per second of one trial with the images in memory or in the mapped store.

    .venv/bin/python bench/store_speed.py studies/cifar10_jpg.yaml --rounds 2
    .venv/bin/python bench/store_speed.py studies/cifar10_jpg.yaml --baseline /tmp/kd-before

Each variant trains the spec's student (alpha = 0, so no teacher is needed) for ``--epochs``
epochs on ``--subset`` of the training images in a fresh process, on the CPU, and reports the
loop's own figure (training images over training seconds; loading and evaluation excluded).
Variants alternate round by round, so a slow spell of the machine hits them alike. With
``--baseline DIR`` (a checkout of another kdsearch commit, e.g. made with ``git worktree add``)
that code runs too, with its default store, as the reference the ratios are taken against.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

TRAIN = """
import json, sys, tempfile
from pathlib import Path
from kdsearch.config import spec as specs
from kdsearch.training.experiment import Context, fit_student
overrides = json.loads(sys.argv[2])
spec = specs.load(sys.argv[1]).with_overrides(overrides)
ctx = Context.load(spec, "cpu", with_teacher=False)
with tempfile.TemporaryDirectory() as tmp:
    out = fit_student(ctx, spec, Path(tmp) / "s.pt", progress=False)
print(json.dumps({"img_s": out.history.images_per_second}))
"""


def run(code_dir: Path, spec: str, overrides: dict[str, Any]) -> float:
    """Images per second of one training run with the kdsearch found in ``code_dir``."""
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN, spec, json.dumps(overrides)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training failed in {code_dir}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["img_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout, timed as the reference")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    common = {
        "train.epochs": args.epochs,
        "dataset.subset_fraction": args.subset,
        "distill.alpha": 0.0,
    }
    here = Path(__file__).resolve().parents[1]
    variants: dict[str, tuple[Path, dict[str, Any]]] = {
        "memory": (here, {**common, "dataset.store": "memory"}),
        "mmap": (here, {**common, "dataset.store": "mmap"}),
    }
    if args.baseline:
        variants = {"baseline": (args.baseline.resolve(), common), **variants}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (code, overrides) in variants.items():
            figures[name].append(run(code, args.spec, overrides))
            print(f"store_speed: {name} {figures[name][-1]:.0f} img/s", file=sys.stderr)
    reference = "baseline" if args.baseline else "memory"
    medians = {name: statistics.median(values) for name, values in figures.items()}
    result = {
        "spec": args.spec,
        "load_average": os.getloadavg()[0],
        "img_s": figures,
        "median_img_s": medians,
        "ratio_to_" + reference: {n: m / medians[reference] for n, m in medians.items()},
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, median in medians.items():
        ratio = median / medians[reference]
        print(f"{name:9} {median:8.0f} img/s  x{ratio:.3f} of {reference}")


if __name__ == "__main__":
    main()
