"""A study's workers as one Slurm job array: the batch script, ``sbatch``, ``squeue``.

Plain ``sbatch`` rather than submitit: the job is one shell script a person can read, grep
and submit by hand (``--dry-run`` prints it); there is no pickled Python callable to keep in
step with the installed kdsearch, nothing extra to install, and the stop and resume logic
already lives in ``kdsearch worker`` (SIGTERM: stop after the epoch, re-queue the trial with
its resume state; heartbeats for a killed one), so a wrapper would add nothing to it.

Each array task ``exec``s one ``kdsearch worker --n-workers 1``, so the worker *is* the batch
step's process and gets Slurm's signals itself: ``--signal=B:TERM@S`` (``B:`` signals the
batch shell, which without ``B:`` would get nothing: there are no job steps) before the time
limit, ``scancel``'s SIGTERM, a preemption's SIGTERM before the requeue (``--requeue``).

What Slurm keeps of a job (its script, arguments, working folder, ``--export`` environment:
``scontrol show job -d``) holds no password: the job runs with ``--export=NONE`` and sets only
``KDSEARCH_HOME``, ``PATH``, the thread count and, when the URL holds a password, the path of
the storage file (:mod:`kdsearch.search.storage_file`) that each worker reads it from, or of
libpq's password file (``PGPASSFILE``; ``~/.pgpass`` needs nothing).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdsearch.errors import KDSearchError

#: Seconds before the time limit that Slurm sends SIGTERM: the worker stops within a batch of
#: it (its trial resumes from its last epoch), well inside this.
SIGNAL_SECONDS = 120


@dataclass(frozen=True)
class JobOptions:
    """Everything the batch script says: one array of ``tasks`` workers on study ``study``."""

    study: str
    tasks: int
    time: str
    python: str
    workdir: Path
    home: Path
    output_dir: Path
    storage: str | None = None  # a password-free URL, passed as --storage
    storage_file: Path | None = None  # else the file the URL is read from
    pgpassfile: str | None = None  # libpq's password file, if not ~/.pgpass (a path, no secret)
    path: str = "/usr/bin:/bin"
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    partition: str | None = None
    account: str | None = None
    signal_seconds: int = SIGNAL_SECONDS
    sbatch_args: Sequence[str] = field(default_factory=tuple)


def job_name(study: str) -> str:
    """The name every task of the study's arrays carries: ``squeue --name`` and ``scancel
    --name`` find them by it."""
    return f"kdsearch-{study}"


def script(o: JobOptions) -> str:
    """The sbatch script for ``o``: directives, the job's few variables, the worker."""
    q = shlex.quote
    directives = [
        f"--job-name={job_name(o.study)}",
        f"--array=0-{o.tasks - 1}",
        f"--time={o.time}",
        f"--cpus-per-task={o.cpus_per_task}",
        f"--signal=B:TERM@{o.signal_seconds}",
        "--requeue",
        "--open-mode=append",
        f"--output={o.output_dir}/%A_%a.out",
        f"--chdir={o.workdir}",
        "--export=NONE",
    ]
    if o.gpus_per_task:
        directives.append(f"--gpus-per-task={o.gpus_per_task}")
    if o.partition:
        directives.append(f"--partition={o.partition}")
    if o.account:
        directives.append(f"--account={o.account}")
    directives.extend(o.sbatch_args)
    worker = [o.python, "-m", "kdsearch", "worker", "--study", o.study, "--n-workers", "1"]
    if not o.gpus_per_task:
        worker += ["--devices", "cpu"]
    if o.storage:
        worker += ["--storage", o.storage]
    env = {"KDSEARCH_HOME": str(o.home), "PATH": o.path}
    if o.storage_file:
        env["KDSEARCH_STORAGE_FILE"] = str(o.storage_file)
    if o.pgpassfile:
        env["PGPASSFILE"] = o.pgpassfile
    lines = [
        "#!/bin/bash",
        f"# kdsearch worker array for study {o.study}: one worker per task, on the GPU Slurm",
        "# gives the task (CPU when none). Cancel: scancel --name=" + job_name(o.study),
        *(f"#SBATCH {d}" for d in directives),
        "",
        "# --export=NONE: nothing of the submitter's environment; only these, no secret.",
        "unset KDSEARCH_STORAGE",
        *(f"export {k}={q(v)}" for k, v in env.items()),
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "# exec: the worker is the batch step's process, so Slurm's SIGTERM (time limit,",
        "# scancel, preemption) reaches it: it stops after the epoch and re-queues its trial.",
        "exec " + " ".join(q(w) for w in worker),
        "",
    ]
    return "\n".join(lines)


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise KDSearchError(
            "submit --slurm: no sbatch on this machine (Slurm is not installed or not on PATH); "
            "submit from a Slurm login node, or start a local one-node Slurm as root with "
            ".ci/slurm.sh start"
        )


def submit(text: str) -> str:
    """Submit the script ``text`` (on stdin, so no file of it is left if Slurm refuses it);
    returns the job id."""
    proc = subprocess.run(
        ["sbatch", "--parsable"], input=text, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise KDSearchError(
            f"submit --slurm: sbatch refused the job ({reason}); fix --partition, --account, "
            "--time or --sbatch-arg"
        )
    return proc.stdout.strip().split(";")[0]


#: The study's user attribute listing the job ids ``submit`` gave it: ``status`` asks Slurm
#: only about studies that have one (a Slurm that is installed but down makes squeue wait
#: seconds for its controller, which no study run by hand should pay on every status).
JOBS_ATTR = "kdsearch_slurm_jobs"


def jobs(study: str) -> list[dict[str, str]]:
    """The study's array tasks that Slurm still knows (``squeue``), pending or running; empty
    where there is no Slurm, or it does not answer."""
    if shutil.which("squeue") is None:
        return []
    try:
        proc = subprocess.run(
            ["squeue", "-h", f"--name={job_name(study)}", "-o", "%i|%T|%M|%l|%R"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return []
    if proc.returncode != 0:
        return []
    keys = ("job", "state", "elapsed", "time_limit", "reason")
    rows = [line.split("|", len(keys) - 1) for line in proc.stdout.splitlines() if line]
    return [dict(zip(keys, row, strict=False)) for row in rows]
