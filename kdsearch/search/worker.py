"""Worker processes: each takes trials from the study until the global budget is spent.

``kdsearch worker --n-workers N`` starts N OS processes (one per device slot, round-robin over
``--devices``), forwards SIGINT/SIGTERM to them and waits. Each worker loads the spec from the
study, the data and the teacher once, and runs Optuna's ``optimize`` loop.

The processes are forked from one multiprocessing *forkserver* that imported the runtime
(torch, torchvision, timm, Optuna, kdsearch's training code: :data:`RUNTIME`) once and never
touched a GPU. Each worker then shares those pages with the others instead of holding its own
~450 MiB copy of them: with the mapped store sharing the images too, four workers hold little
more than one (docs/imagenette.md, bench/memory.py). Arguments, the storage URL among them,
reach a worker through the forkserver's socket, never its command line or environment, so a
password never shows in ``ps``. Each worker names itself ``kdsearch-wN`` (``ps -o comm``).

Budget: the spec's ``search.n_trials`` is global and exact. A search trial takes a slot from
when it starts until it fails (:func:`kdsearch.search.ranking.claims_budget`); a worker starts
no trial once every slot is taken, and a trial two workers started at the same moment beyond
the last slot is pruned untrained (``Objective._skip_over_budget``). A worker whose slots are
all taken stays while other workers' trials run (:func:`wait_for_others`): it retries a trial
whose worker died, or takes the slot a failed trial frees. Retries of failed trials replace
them; they never add to the budget. A ``bench-search`` search is budgeted in epochs instead
(the study's ``kdsearch_epoch_budget``; its ``n_trials`` only caps it): it is spent when its
search trials have trained that many epochs.

Confirmation: once the budget is met, a worker queues the spec's confirmation trials
(``search.confirm``; :mod:`kdsearch.search.confirm`), and every worker runs queued ones
(also those ``kdsearch confirm`` queued) until none waits. They do not count toward the budget.

Failures: a failed trial does not count toward the budget, so a failure that repeats (a value
that cannot be computed, out of memory on every trial) would loop for ever: a worker whose
``REPEATED_FAILURES`` last trials failed with the same error stops with that error on one line
and exit code 2.

Stopping: SIGTERM or SIGINT makes a worker stop between two batches; its trial is marked
failed and re-queued with the same parameters, and the retry resumes from the last epoch
checkpoint. A SIGKILLed worker's trial is failed and re-queued by Optuna's heartbeat instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from kdsearch.errors import KDSearchError
from kdsearch.search import progress
from kdsearch.threads import from_env

log = logging.getLogger("kdsearch.search.worker")

#: How long the parent waits for workers after forwarding a stop signal before killing them.
STOP_GRACE_S = 25
#: Trials in a row, in one worker, that fail with one error before the worker gives up.
REPEATED_FAILURES = 3
#: The longest a worker whose budget slots are all taken waits before looking at the study
#: again (with heartbeats it looks every heartbeat interval, up to this). Every idle worker
#: reads all trials each time: at 1 s, 60 idle workers kept the gRPC proxy too busy to serve
#: the last trials' own writes (bench/load.py, docs/scale-out.md).
WAIT_POLL_S = 10.0
#: What the forkserver imports once for all workers (a missing optional one, timm, is skipped).
RUNTIME = (
    "torch",
    "torchvision",
    "timm",
    "optuna",
    "kdsearch.search.objective",
    "kdsearch.search.storage",
)


def default_devices() -> list[str]:
    """Every visible GPU, else the CPU (nvidia-smi avoids importing torch in the parent)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return [f"cuda:{i}" for i in out] or ["cpu"]


def plan(n_workers: int, devices: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """(device, extra environment) per worker: round-robin over devices, CPU threads split.

    The cores split are those this process may run on (a container's ``--cpuset-cpus``,
    ``taskset``), not the machine's. ``KDSEARCH_THREADS`` set by the user wins: several worker
    containers on one CPU host each see every core and would together run cores x containers
    threads, which on a CPU slows every one of them many times over (OpenMP threads spin).
    """
    assigned = [devices[i % len(devices)] for i in range(n_workers)]
    n_cpu = sum(d == "cpu" for d in assigned)
    threads = from_env() or max(1, len(os.sched_getaffinity(0)) // max(1, n_cpu))
    out = []
    for device in assigned:
        env = {"OMP_NUM_THREADS": str(threads), "KDSEARCH_THREADS": str(threads)}
        if device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2] or "0"
            device = "cuda"
        out.append((device, env))
    return out


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """In a process forked straight from ``parent``: get ``signum`` when it dies (Linux).

    A parent that died before this call sends no signal (the child was re-parented already),
    so that case is checked after asking for it: the child leaves at once.
    """
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def stop_when_orphaned() -> None:
    """In a worker: SIGTERM itself (stop after the epoch, re-queue the trial) once the
    ``kdsearch worker`` command that started it is gone, even killed with SIGKILL.

    The kernel's parent-death signal cannot do this here: a worker's parent is the
    forkserver, which lives as long as any worker does. multiprocessing's parent sentinel
    instead becomes readable when the command itself ends, and a thread waits on it.
    """
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    assert parent is not None  # called in worker processes only, never in the command itself
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        log.warning("the kdsearch worker command that started this worker is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def name_process(name: str) -> None:
    """Set the name ``ps -o comm``, ``top`` and /proc/PID/comm show (at most 15 bytes)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(15, name.encode()[:15])  # PR_SET_NAME


def runtime_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context whose processes share one imported runtime (:data:`RUNTIME`)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(RUNTIME))
    return context


def start(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` without making it import the caller's ``__main__`` again.

    multiprocessing's children normally re-run the main script (as ``__mp_main__``) so that
    functions defined there can be found; a script that calls :func:`kdsearch.api.run_workers`
    without an ``if __name__ == "__main__"`` guard would then start workers from each worker.
    A kdsearch process's target lives in a module, so its children are told there is no main.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main


def spawn(
    study: str,
    storage_url: str,
    n_workers: int,
    devices: Sequence[str],
    n_trials: int | None,
    timeout: float | None,
) -> int:
    """Run ``n_workers`` worker processes to the end; returns the worst exit code, or
    ``128 + signal`` when a stop signal ended them (see :func:`run`)."""
    targets = [
        (_child, (study, index, device, n_trials, timeout, env, storage_url))
        for index, (device, env) in enumerate(plan(n_workers, devices))
    ]
    outcome = run_processes(targets, n_workers)
    return 128 + outcome.signum if outcome.signum else outcome.code


@dataclass
class Outcome:
    """How :func:`run_processes` ended: the worst exit code, and the stop signal that came
    (None if none)."""

    code: int
    signum: int | None

    @property
    def stopped(self) -> bool:
        return self.signum is not None


def run_processes(
    targets: Sequence[tuple[Callable[..., None], tuple[Any, ...]]], at_once: int
) -> Outcome:
    """Run each ``(function, args)`` in a process forked from the runtime's forkserver, in
    order, ``at_once`` at a time (the workers of ``kdsearch worker``, bench-search's runs).

    Each process shares the runtime the forkserver imported, and should call
    :func:`stop_when_orphaned` first: if this process dies, even by SIGKILL, it then stops
    after its epoch. SIGINT and SIGTERM here are forwarded as SIGTERM to the running ones (stop
    after the epoch, re-queue the trial), nothing more starts, and those still running after
    :data:`STOP_GRACE_S` are killed. Both signals' handlers are restored afterwards.
    """
    context = runtime_context()
    queue = list(targets)
    running: list[multiprocessing.process.BaseProcess] = []
    finished: list[multiprocessing.process.BaseProcess] = []
    stopping = threading.Event()
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stopping.set()
        for child in running:
            if child.is_alive():
                child.terminate()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None
    try:
        while queue or running:
            while queue and len(running) < at_once and not stopping.is_set():
                function, args = queue.pop(0)
                child: multiprocessing.process.BaseProcess = context.Process(
                    target=function, args=args
                )
                start(child)
                running.append(child)
            if stopping.is_set():
                queue.clear()
                deadline = deadline or time.monotonic() + STOP_GRACE_S
                if time.monotonic() > deadline:
                    for child in running:
                        child.kill()
            done = [c for c in running if not c.is_alive()]
            for child in done:
                child.join()
                running.remove(child)
                finished.append(child)
            time.sleep(0.2 if running else 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [abs(c.exitcode or 0) for c in finished]
    return Outcome(max(codes, default=0), received[0] if received else None)


def _child(
    study: str,
    index: int,
    device: str,
    n_trials: int | None,
    timeout: float | None,
    env: dict[str, str],
    url: str,
) -> None:
    """A worker process, forked by the forkserver: its settings, then :func:`run`."""
    stop_when_orphaned()
    name_process(f"kdsearch-w{index}")
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES before anything initializes CUDA
    configure_logging(index)
    from kdsearch.errors import report_errors

    sys.exit(report_errors(lambda: run(study, index, device, n_trials, timeout, url)))


def run(
    study_name: str,
    index: int,
    device: str,
    n_trials: int | None,
    timeout: float | None,
    url: str | None = None,
    seed_salt: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """One worker: load once, then run trials until the budget, a timeout or a stop signal.

    SIGINT and SIGTERM stop it after the current epoch (the trial is re-queued), and it then
    returns ``128 + signal`` (130, 143), as a shell reports a command a signal ended: a
    scheduler (a Kubernetes Job, a Slurm array) must not count a stopped worker as one that
    finished its work, which is what 0 says. The handlers before the call are restored after
    it, so a process that runs workers one after another (bench-search's pool) is not left
    deaf to signals. ``stop``, if given, is the Event those
    handlers set: a caller that runs workers in a loop sees the signal and ends its loop too.
    ``seed_salt`` fixes the sampler's seed salt (:func:`kdsearch.search.study.worker_seed`).
    """
    stop = stop or threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        code = _work(study_name, index, device, n_trials, timeout, url, seed_salt, stop)
        return 128 + received[0] if received else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _work(
    study_name: str,
    index: int,
    device: str,
    n_trials: int | None,
    timeout: float | None,
    url: str | None,
    seed_salt: str | None,
    stop: threading.Event,
) -> int:
    """Work on the study, then on its baseline arm (``search.baseline``), or the other way
    round for odd-numbered workers, so that several workers advance both arms at once and a
    status shows both; one arm's ``n_trials`` and the ``timeout`` left go to each."""
    from kdsearch.search import study as studies

    started = time.monotonic()
    first = _Worker(study_name, index, url, seed_salt, stop)
    sibling = first.study.user_attrs.get(studies.BASELINE_STUDY_ATTR)
    order: list[_Worker | str] = [first] if sibling is None else [first, sibling]
    for arm in order[:: -1 if index % 2 else 1]:
        left = timeout - (time.monotonic() - started) if timeout else None
        if stop.is_set() or (left is not None and left <= 0):
            break
        worker = arm if isinstance(arm, _Worker) else _Worker(arm, index, url, seed_salt, stop)
        _work_on(worker, device, n_trials, left, stop)
        worker.unload()  # the data and teacher cache go before the other arm loads its own
    return 0


def _work_on(
    worker: _Worker,
    device: str,
    n_trials: int | None,
    timeout: float | None,
    stop: threading.Event,
) -> None:
    """Leave at once if nothing is left to do in the worker's study; else load the data and
    the teacher and take trials until ``n_trials``, ``timeout``, a stop or nothing left."""
    if worker.idle():
        budget = progress.count(worker.budget, "trial")
        log.info("study %s has reached its budget of %s", worker.study.study_name, budget)
        return
    worker.load(device)
    started = time.monotonic()
    ran = 0
    while not stop.is_set() and (not n_trials or ran < n_trials):
        left = timeout - (time.monotonic() - started) if timeout else None
        if left is not None and left <= 0:
            break
        before = worker.objective.trials_started
        try:
            go_on = worker.step((n_trials - ran) if n_trials else None, left)
        except Exception as err:
            worker.recover(err)
            go_on = True
        ran += worker.objective.trials_started - before
        if not go_on:
            break


class _Worker:
    """One worker's hold on a study: the study and its storage, the budget, the objective.

    :meth:`step` does one thing the study needs (search, wait for other workers' trials, run
    confirmations) and :meth:`recover` decides what an error in it means; :func:`_work` loops.
    """

    def __init__(
        self,
        study_name: str,
        index: int,
        url: str | None,
        seed_salt: str | None,
        stop: threading.Event,
    ) -> None:
        import optuna
        import torch

        from kdsearch.search import storage as storages
        from kdsearch.search import study as studies

        # A stop is not a failure worth a traceback: _requeue logs it as one line.
        logging.getLogger("optuna.study._optimize").addFilter(_not_a_stop)
        threads = from_env()
        if threads:
            torch.set_num_threads(threads)
        # Heartbeats and their retry callback are marked experimental; they are what we rely on.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        url = url or storages.resolve_url()
        first = storages.open_storage(url)
        self.spec = studies.load_spec(first, study_name)
        storages.close(first)  # the heartbeat settings it held are in the spec: one pool each
        s = self.spec.search
        self.storage = storages.open_storage(
            url, s.heartbeat_interval, s.grace_period, s.max_retries
        )
        self.study = optuna.load_study(
            study_name=study_name,
            storage=self.storage,
            sampler=studies.make_sampler(
                self.spec, studies.worker_seed(self.spec, index, seed_salt)
            ),
            pruner=studies.make_pruner(self.spec),
        )
        self.budget = s.n_trials
        # A bench-search study is budgeted in epochs (its n_trials only caps it), so a worker
        # started on it by hand, to run confirmations, does not go on searching.
        self.epoch_budget: int | None = self.study.user_attrs.get(studies.EPOCH_BUDGET_ATTR)
        self.stop = stop
        self.failures: list[str] = []

    def budget_met(self) -> bool:
        if self.epoch_budget is not None:
            return search_epochs_trained(self.study) >= self.epoch_budget
        return search_trials_finished(self.study) >= self.budget

    def budget_taken(self) -> bool:
        if self.epoch_budget is not None:  # a trial's length is not known before it ends
            return self.budget_met()
        return search_trials_claimed(self.study) >= self.budget

    def confirmations_due(self) -> bool:
        """Queue the spec's confirmations once the budget is met; whether any is waiting."""
        from kdsearch.search import confirm, ranking

        c = self.spec.search.confirm
        if c and self.budget_met() and ranking.complete(self.study):
            queued = confirm.enqueue(self.study, self.spec, c.top, c.seeds)
            if queued:
                log.info("search budget met: %d confirmation trials queued", len(queued))
        return confirm.waiting(self.study)

    def idle(self) -> bool:
        """Nothing for this worker: the budget is met, no trial runs (one may have lost its
        worker a moment ago, before its heartbeat went silent: finish_orphans watches those),
        none needs a retry and no confirmation waits."""
        import optuna

        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return (
            self.budget_met()
            and not running
            and not _orphans(self.study, self.storage)
            and not self.confirmations_due()
        )

    def load(self, device: str) -> None:
        """The data, the teacher and the objective: once, for every trial this worker runs."""
        from kdsearch.search import study as studies
        from kdsearch.search.objective import Objective
        from kdsearch.training.experiment import Context

        if studies.study_id(self.study) is None:
            log.warning(
                "study %s was created before study ids: its files share models/studies/%s "
                "with any other study of that name; create it again for a folder of its own",
                self.study.study_name,
                self.study.study_name,
            )
        ctx = Context.load(self.spec, device)
        self.objective = Objective(ctx, self.study, should_stop=self.stop.is_set)

    def unload(self) -> None:
        """Let go of what :meth:`load` holds (the data, the teacher and its logit cache)."""
        self.__dict__.pop("objective", None)

    def after_trial(self, study: Any, trial: Any) -> None:
        from kdsearch.search import study as studies

        studies.prune_checkpoints(study, self.spec.search.keep_checkpoints, self.objective.store)
        _count_failure(self.failures, trial, self.objective.last_failure)
        if self.stop.is_set():
            study.stop()

    def stop_when_taken(self, study: Any, _trial: Any) -> None:
        if self.budget_taken():
            study.stop()

    def _optimize(self, n_trials: int | None, timeout: float | None, *first: Callable) -> None:
        import torch

        self.study.optimize(
            self.objective,
            n_trials=n_trials,
            timeout=timeout,
            callbacks=[*first, self.after_trial, progress.trial_done],
            catch=(torch.OutOfMemoryError,),
        )

    def run_one(self) -> None:
        """One trial; a queued retry or confirmation comes first in Optuna's queue."""
        self._optimize(1, None)

    def step(self, n_trials: int | None, timeout: float | None) -> bool:
        """Search while a slot is free (up to ``n_trials``), else wait for the others'
        trials, else run what is queued; False once nothing is left for this worker.

        ``n_trials`` bounds every path: retries and confirmations run one at a time here, and
        a worker asked for one trial (``--n-trials 1``) must not run all that is queued."""
        from kdsearch.search import confirm

        first = self.objective.trials_started

        def stopping() -> bool:
            ran = self.objective.trials_started - first
            return self.stop.is_set() or (n_trials is not None and ran >= n_trials)

        if not self.budget_taken():
            self._optimize(n_trials, timeout, self.stop_when_taken)
            return True
        if not self.budget_met():  # every slot taken, some still running elsewhere
            wait_for_others(
                self.study, self.storage, self.run_one, stopping, self.budget_taken, self.budget_met
            )
            return True
        while not stopping():
            if self.confirmations_due():
                self.run_one()
                continue
            finish_orphans(self.study, self.storage, self.run_one, stopping)
            if not confirm.waiting(self.study):
                break
        return False

    def recover(self, err: Exception) -> None:
        """After an error in :meth:`step`: go on, or re-raise what this worker cannot survive."""
        from kdsearch.files import DiskFull

        if self.objective.taken_over is not None:  # Optuna could not tell it: it is not ours
            self.objective.taken_over = None
        elif isinstance(err, DiskFull):  # a worker with space resumes it; this one stops
            _requeue(self.study, self.objective, self.spec.search.max_retries, err)
            raise err
        elif not _survivable(err, self.stop.is_set()):
            raise err
        else:
            _requeue(self.study, self.objective, self.spec.search.max_retries, err)


def search_trials_finished(study: Any) -> int:
    """Finished (complete or pruned) search trials: the budget is met when they reach
    ``search.n_trials``."""
    import optuna

    from kdsearch.search.ranking import claims_budget

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=finished)
    return sum(claims_budget(t) for t in trials)


def search_epochs_trained(study: Any) -> int:
    """Epochs the study's search trials have trained (confirmations are not the search's)."""
    from kdsearch.search.ranking import is_confirmation

    trials = study.get_trials(deepcopy=False)
    return sum(len(t.intermediate_values) for t in trials if not is_confirmation(t))


def search_trials_claimed(study: Any) -> int:
    """Search trials finished, running or queued: once they reach ``search.n_trials`` no new
    trial starts (the budget is exact, :meth:`Objective._skip_over_budget`)."""
    from kdsearch.search.ranking import claims_budget

    return sum(claims_budget(t) for t in study.get_trials(deepcopy=False))


def wait_for_others(
    study: Any,
    storage: Any,
    run_retry: Callable[[], None],
    stopping: Callable[[], bool],
    taken: Callable[[], bool],
    met: Callable[[], bool],
) -> None:
    """Every slot of the budget is taken but some trials still run on other workers: stay,
    retrying any whose worker dies (:func:`finish_orphans`), until they finish (the budget is
    met: confirmations may follow) or one fails and frees its slot."""
    import optuna

    from kdsearch.search.ranking import claims_budget

    interval = getattr(storage, "heartbeat_interval", None) or 0
    while not stopping() and taken() and not met():
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if any(claims_budget(t) for t in waiting):  # a retry or a trial someone queued
            run_retry()
            continue
        finish_orphans(study, storage, run_retry, stopping)
        # At the heartbeat interval the user chose; without heartbeats (the gRPC proxy), slowly.
        time.sleep(min(max(interval, 1.0), WAIT_POLL_S) if interval else WAIT_POLL_S)


def _count_failure(streak: list[str], trial: Any, reason: str | None) -> None:
    """Track this worker's run of identical failures; raise once it is too long."""
    if trial.state.name != "FAIL":
        streak.clear()
        return
    reason = reason or "unknown error"
    if streak and streak[-1] != reason:
        streak.clear()
    streak.append(reason)
    if len(streak) >= REPEATED_FAILURES:
        raise KDSearchError(
            f"{len(streak)} trials in a row failed with the same error ({reason}); "
            "this worker stops: fix the spec or its cause, then start the worker again"
        )


def _silent_trials(storage: Any, study_id: int, seconds: float) -> list[int]:
    """RUNNING trials whose heartbeat has been silent for over ``seconds``.

    Optuna's own staleness query with a shorter limit than the grace period: a live worker
    beats every interval, so a trial silent for two intervals has lost its worker.
    """
    from types import SimpleNamespace

    from optuna.storages import RDBStorage

    if not isinstance(storage, RDBStorage) or not storage.heartbeat_interval:
        return []  # no heartbeats (gRPC proxy): nothing can tell a dead worker
    view = SimpleNamespace(
        heartbeat_interval=storage.heartbeat_interval,
        grace_period=seconds,
        scoped_session=storage.scoped_session,
    )
    return RDBStorage._get_stale_trial_ids(view, study_id)  # type: ignore[arg-type]


def _orphans(study: Any, storage: Any) -> bool:
    """Whether a trial needs this worker although the budget is met: a queued retry, or a
    RUNNING trial whose worker has died."""
    import optuna

    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if any("failed_trial" in t.system_attrs for t in waiting):
        return True
    interval = getattr(storage, "heartbeat_interval", None) or 0
    return bool(_silent_trials(storage, study._study_id, 2 * interval))


def finish_orphans(
    study: Any, storage: Any, run_retry: Callable[[], None], stopping: Callable[[], bool]
) -> None:
    """Before leaving a study whose budget is met, fail and retry trials whose worker died.

    Optuna fails a trial whose heartbeat stopped only when a worker asks for a new trial after
    the grace period, and workers stop asking once the budget is met: a worker killed near the
    end would leave its trial RUNNING for ever, its epochs lost. So while a RUNNING trial's
    heartbeat is silent, wait out the grace period; Optuna's ``fail_stale_trials`` then fails
    it and its ``RetryHeartbeatStaleTrialCallback`` queues the retry, which runs here and
    resumes from the epoch checkpoint. A worker killed a moment ago still looks alive until its
    heartbeat has been silent for two intervals, so while other trials run, the worker watches
    them that long before it concludes that their workers are alive and leaves.
    """
    import optuna

    running = (optuna.trial.TrialState.RUNNING,)
    interval = getattr(storage, "heartbeat_interval", None) or 0
    watch_until = time.monotonic() + 2 * interval
    while not stopping():
        if not _orphans(study, storage):
            if time.monotonic() >= watch_until or not study.get_trials(False, states=running):
                return
            time.sleep(1)
            continue
        optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if any("failed_trial" in t.system_attrs for t in waiting):
            log.info("budget met; running the retry of a trial whose worker died")
            run_retry()
        else:
            time.sleep(1)


def _not_a_stop(record: logging.LogRecord) -> bool:
    """Logging filter: drop Optuna's "trial failed" traceback for a requested stop, a trial
    retried elsewhere and a full disk (each is said in one line of kdsearch's own)."""
    from kdsearch.files import DiskFull
    from kdsearch.search.objective import TrialTakenOver
    from kdsearch.training.loop import StopRequested

    quiet = (StopRequested, TrialTakenOver, DiskFull)
    return not (record.exc_info and isinstance(record.exc_info[1], quiet))


def _survivable(err: Exception, stopping: bool) -> bool:
    """Errors after which the worker goes on (or, when stopping, exits cleanly)."""
    import sqlalchemy.exc

    from kdsearch.training.loop import StopRequested

    if isinstance(err, StopRequested):
        return True
    # Optuna wraps driver errors (StorageInternalError), so look down the cause chain.
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    lost_types = sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
    lost = [e for e in chain if isinstance(e, lost_types) or _proxy_unreachable(e)]
    if lost:
        log.warning("storage unreachable (%s); reconnecting in 5 s", type(lost[0]).__name__)
        time.sleep(5)
        return not stopping
    return False


def _proxy_unreachable(err: BaseException) -> bool:
    """A gRPC storage proxy that is down or restarting (UNAVAILABLE), or too slow to answer."""
    import grpc

    codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return isinstance(err, grpc.RpcError) and getattr(err, "code", lambda: None)() in codes


def _requeue(study: Any, objective: Any, max_retries: int, err: Exception) -> None:
    """Queue a retry (same parameters, resumes from its epoch checkpoint) of the trial that
    ``err`` interrupted, as the heartbeat does for a killed worker; a database that is still
    down leaves that to the heartbeat of the next worker."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if objective.current is None:
        return
    try:
        frozen = study._storage.get_trial(objective.current._trial_id)
        if frozen.state.name == "RUNNING":
            study._storage.set_trial_state_values(
                frozen._trial_id, state=optuna.trial.TrialState.FAIL
            )
            frozen = study._storage.get_trial(frozen._trial_id)
        if frozen.state.name == "FAIL":
            RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, frozen)
            why = "stopped" if type(err).__name__ == "StopRequested" else type(err).__name__
            log.info("%s: trial %d re-queued to resume from its last epoch", why, frozen.number)
    except Exception as again:  # the database may still be unreachable
        log.warning("could not re-queue trial (%s); the heartbeat will", type(again).__name__)


def configure_logging(index: int) -> None:
    progress.configure(worker=index)
