"""``make demo``: a real search, offline, on CPU, from ``studies/digits_demo.yaml``.

It runs the commands a user would run, printing each one: train the teacher (once), create a
fresh study and its tuned baseline arm in SQLite (``search.baseline``: the same student
searched without a teacher, with the same budget), run two worker processes with pruning over
both arms, and print the exported table, the confirmed best of each arm, the gain of
distilling with its interval, and the dashboard command.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SPEC = "studies/digits_demo.yaml"
STORAGE = "sqlite:///kdsearch.db"


def sh(*args: str, capture: bool = False) -> str:
    print(f"\n$ {shlex.join(args)}", flush=True)
    kdsearch = [sys.executable, "-m", "kdsearch"]
    cmd = kdsearch + list(args[1:]) if args[0] == "kdsearch" else list(args)
    out = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ""


def main() -> int:
    import optuna

    from kdsearch.config import spec as specs
    from kdsearch.paths import resolve
    from kdsearch.search import confidence, gain

    os.environ.setdefault("KDSEARCH_STORAGE", STORAGE)
    spec = specs.load(SPEC)
    started = time.perf_counter()
    assert spec.teacher is not None and spec.teacher.checkpoint  # the demo's spec distills
    if not resolve(spec.teacher.checkpoint).is_file():
        sh("kdsearch", "train-teacher", SPEC)
    study = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    sh("kdsearch", "create-study", SPEC, "--study-name", study)
    sh("kdsearch", "worker", "--study", study, "--n-workers", "2", "--devices", "cpu")

    ranked = confidence.rank(optuna.load_study(study_name=study, storage=STORAGE))
    if ranked.winner is None:
        sys.exit(f"demo: study {study} finished no trial; see `kdsearch status --study {study}`")
    columns = ["number", "state", "val_accuracy", "test_accuracy", *spec.search.space]
    columns += ["epochs_run", "duration_s"]
    sh(
        "kdsearch",
        "export-table",
        "--study",
        study,
        "--by",
        "trial",
        "--top",
        "10",
        "--columns",
        ",".join(columns),
    )
    sh("kdsearch", "export-table", "--study", study, "--by", "configuration", "--top", "5")
    Path("results").mkdir(exist_ok=True)
    sh("kdsearch", "export-table", "--study", study, "-o", f"results/{study}.csv")

    found = gain.of_study(optuna.load_study(study_name=study, storage=STORAGE))
    if found is None:
        sys.exit(f"demo: the baseline arm finished no trial; see `kdsearch status --study {study}`")
    labels = f"{spec.dataset.labeled_fraction:.0%} of the training labels"
    print(f"\nBest distilled student vs. tuned baseline ({labels}, same epochs, same budget):")
    print(f"  {'':<40}{'val acc':>9}{'test acc':>10}")
    for arm, what in ((found.distilled, "distilled"), (found.baseline, "baseline, no teacher")):
        label = f"{what} (trial {arm.trial}, {arm.n} seeds)"
        test = f"{arm.test_mean:>10.4f}" if arm.test_mean is not None else f"{'n/a':>10}"
        print(f"  {label:<40}{arm.val_mean:>9.4f}{test}")
    print(f"gain: {found.sentence()}")
    print(f"confidence: {ranked.summary()}")
    print(f"demo took {time.perf_counter() - started:.0f} s; table in results/{study}.csv")
    print("browse the study:  .venv/bin/optuna-dashboard sqlite:///kdsearch.db")
    print("              or:  .venv/bin/kdsearch dashboard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
