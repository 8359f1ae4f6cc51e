"""``make demo``: a real search, offline, on CPU, from ``studies/digits_quick.yaml``.

It runs the commands a user would run, printing each one: train the teacher (once), create a
fresh study in SQLite, run two worker processes with pruning, train the no-distillation
baseline with the best trial's hyperparameters (alpha = 0, same labels, same epochs), and
print the exported table, the best distilled student beside the baseline, and the dashboard
command.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

SPEC = "studies/digits_quick.yaml"
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
    from kdsearch.search import confidence

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
    winner = ranked.winner
    if winner is None:
        sys.exit(f"demo: study {study} finished no trial; see `kdsearch status --study {study}`")
    best = winner.trial
    sets = [f"--set={k}={v}" for k, v in best.params.items() if k != "alpha"]
    baseline = json.loads(
        sh(
            "kdsearch",
            "train",
            SPEC,
            "--set=distill.alpha=0",
            *sets,
            f"--out=models/{study}-baseline.pt",
            "--json",
            capture=True,
        )
    )
    optuna.load_study(study_name=study, storage=STORAGE).set_user_attr("baseline", baseline)
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

    labels = f"{spec.dataset.labeled_fraction:.0%} of the training labels"
    print(f"\nBest distilled student vs. no-distillation baseline ({labels}, same epochs):")
    print(f"  {'':<34}{'val acc':>9}{'test acc':>10}")
    seeds = f", {winner.n} seeds" if winner.n > 1 else ""
    print(
        f"  {'distilled (trial ' + str(best.number) + seeds + ')':<34}{winner.mean:>9.4f}"
        f"{winner.test_mean:>10.4f}"
    )
    print(
        f"  {'baseline (alpha=0, same lr/dropout)':<34}{baseline['val_accuracy']:>9.4f}"
        f"{baseline['test_accuracy']:>10.4f}"
    )
    print(f"\nbest parameters: {best.params}")
    print(f"confidence: {ranked.summary()}")
    print(f"demo took {time.perf_counter() - started:.0f} s; table in results/{study}.csv")
    print("browse the study:  .venv/bin/optuna-dashboard sqlite:///kdsearch.db")
    print("              or:  .venv/bin/kdsearch dashboard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
