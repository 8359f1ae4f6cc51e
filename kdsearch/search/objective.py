"""The Optuna objective: one trial = one distilled student, reported and pruned per epoch.

Before training, the student's cost (parameters, FLOPs, latency on the worker's device; see
:mod:`kdsearch.nets.cost`) is stored as trial user attributes; after each epoch, the mean of
each named loss term so far (``loss_terms``: name → one value per epoch).

A trial samples ``search.space``, applies the values as spec overrides, and trains with the
worker's :class:`~kdsearch.training.experiment.Context`. Its value is the best validation accuracy
over its epochs. Each epoch's state is checkpointed under the trial chain's folder in the
study's folder (:func:`kdsearch.search.study.folder`), so a retry of a killed trial (Optuna's
heartbeat re-queues it with the same parameters) resumes from the last finished epoch instead
of starting over. The state records the study id, the chain and the parameters it was written
for, and only a run with the same three resumes it.

A confirmation trial (:mod:`kdsearch.search.confirm`) trains its queued parameters with its
own ``train.seed`` and is never pruned: its value is one more seed of a configuration.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from kdsearch import nets
from kdsearch.config.metrics import METRICS
from kdsearch.config.spec import ParamSpec, Spec
from kdsearch.search import confirm, pace, progress, ranking
from kdsearch.search import study as studies
from kdsearch.search.trial_files import CheckpointStore, trial_by_number
from kdsearch.training.experiment import Context, fit_student
from kdsearch.training.loop import EpochResult, History, NonFiniteLoss

#: User attribute of a grid trial skipped because an earlier trial holds its point.
GRID_DUPLICATE = "grid_duplicate_of"

log = logging.getLogger(__name__)


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample every parameter of the search space on ``trial``."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, p.choices or [])
            continue
        assert p.low is not None and p.high is not None  # ParamSpec.check requires both
        if p.type == "int":
            step = int(p.step or 1)
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=step, log=p.log)
        else:
            out[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return out


def retry_chain(trial: optuna.Trial) -> list[int]:
    """Numbers of the earlier attempts this trial retries, first one first (empty if none)."""
    # A live Trial has no system_attrs in Optuna 5; the FrozenTrial from storage does.
    frozen = trial.study._storage.get_trial(trial._trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(frozen))


class TrialTakenOver(Exception):
    """This worker's trial was failed and retried by another worker while this one sent no
    heartbeat past the grace period (paused by SIGSTOP, a suspended machine, a long stall).

    The retry resumed from the trial's last epoch in a folder of its own, so the late epochs
    this worker trained are dropped with that trial's folder; the worker goes on.
    """


class Objective:
    """Callable for ``study.optimize``; holds the worker's context across trials."""

    def __init__(
        self, ctx: Context, study: optuna.Study, should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.ctx = ctx
        self.spec: Spec = ctx.spec
        self.study_id = studies.study_id(study)
        self.folder = studies.folder(study)
        self.should_stop = should_stop
        self.store = CheckpointStore(ctx.spec.search.artifact_store, self.folder.name)
        #: The trial in progress (so a worker can re-queue it when interrupted).
        self.current: optuna.Trial | None = None
        self.trials_started = 0
        #: Why the last trial failed (None if it did not), for the worker's repeat check.
        self.last_failure: str | None = None
        #: The number of a trial retried elsewhere while this worker was paused, until the
        #: worker has seen it (:class:`TrialTakenOver`).
        self.taken_over: int | None = None

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.current = trial
        self.trials_started += 1
        self.last_failure = None
        try:
            value = self._run(trial)
        except optuna.TrialPruned:
            raise
        except optuna.exceptions.UpdateFinishedTrialError as err:
            # The storage refuses to update a trial another worker has failed (and retried).
            self.taken_over = trial.number
            self._discard(trial, self._workdir(trial.number))
            log.warning(
                "trial %d was failed and retried by another worker while this worker sent no "
                "heartbeat for over %d s (paused?); its late epochs are dropped, going on",
                trial.number,
                self.spec.search.grace_period,
            )
            raise TrialTakenOver(f"trial {trial.number} was retried elsewhere") from err
        except Exception as err:
            self.last_failure = f"{type(err).__name__}: {err}"
            raise
        accuracy = value[0] if isinstance(value, list) else value
        if not math.isfinite(accuracy):  # Optuna fails the trial; say why in the worker's terms
            self.last_failure = f"validation accuracy is {accuracy}"
        return value

    def _run(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        self._skip_over_budget(trial)
        params = suggest(trial, self.spec.search.space)
        self._skip_taken_grid_point(trial)
        spec = self._trial_spec(trial, params)
        chain = retry_chain(trial)
        workdir = self._resume_state(trial, chain)
        log.info("trial %d started: %s", trial.number, progress.fmt_params(params))
        cost = self._cost(spec).as_attrs()
        for key, value in cost.items():
            trial.set_user_attr(key, value)
        self._check_constraints(trial, cost)
        root = chain[0] if chain else trial.number
        reporter = _Reporter(trial, self.spec, self.store, workdir, root)
        # One TensorBoard run per retry chain, so a resumed trial continues its own curves.
        tb = self.folder / "tensorboard" / f"trial-{root:05d}"
        try:
            outcome = fit_student(
                self.ctx,
                spec,
                workdir / "best.pt",
                workdir=workdir,
                on_epoch=reporter.on_epoch,
                on_resume=reporter.on_resume,
                resume_tag={"study_id": self.study_id, "trial": root, "params": params},
                should_stop=self.should_stop,
                progress=progress.show_bar(),
                tensorboard_dir=tb if spec.train.tensorboard else None,
            )
        except NonFiniteLoss as err:
            trial.set_user_attr("prune_reason", str(err))
            self._discard(trial, workdir)
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            self._discard(trial, workdir)
            raise
        self._keep(trial, outcome, chain, workdir)
        if reporter.single:
            return outcome.val_accuracy
        costs = [cost[METRICS[m]] for m in self.spec.search.objectives[1:]]
        return [outcome.val_accuracy, *map(float, costs)]

    def _trial_spec(self, trial: optuna.Trial, params: dict[str, Any]) -> Spec:
        """The spec with the trial's parameters; a confirmation trial's with its own seed."""
        spec = self.spec.with_overrides(params)
        attrs = trial.user_attrs
        if ranking.CONFIRM_OF in attrs:
            self._skip_duplicate_confirmation(trial, attrs[ranking.CONFIRM_OF], attrs[ranking.SEED])
            spec = spec.with_overrides({"train.seed": attrs[ranking.SEED]})
        return spec

    def _resume_state(self, trial: optuna.Trial, chain: list[int]) -> Path:
        """The attempt's own folder, holding the resume state of the retry chain if any.

        Every attempt writes a folder of its own: an earlier attempt whose worker was only
        paused may wake up and write on; it must not overwrite its retry's files. A retry on
        another machine finds the resume state in the artifact store, if any; on this
        machine, in the folder of the latest earlier attempt that left one.
        """
        workdir = self._workdir(trial.number)
        if self.store.pull(trial.study, chain, workdir / "last.pt"):
            self.store.pull(trial.study, chain, workdir / "best.pt")
        else:
            _copy_resume_state([self._workdir(n) for n in reversed(chain)], workdir)
        return workdir

    def _keep(self, trial: optuna.Trial, outcome: Any, chain: list[int], workdir: Path) -> None:
        """A finished trial: its best checkpoint (with test accuracy) kept and uploaded, its
        resume state and the earlier attempts' files removed, its results stored on it."""
        h = outcome.history
        (workdir / "last.pt").unlink(missing_ok=True)  # resume state is not needed any more
        self.store.drop(trial._trial_id, "last.pt")
        self.store.push(trial.study, trial._trial_id, outcome.checkpoint)  # with test accuracy
        for number in chain:  # earlier attempts' files are superseded by this trial's
            shutil.rmtree(self._workdir(number), ignore_errors=True)
            self.store.remove_all(trial.study, trial_by_number(trial.study, number))
        for key, value in {
            "val_accuracy": outcome.val_accuracy,
            "best_epoch": h.best_epoch + 1,
            "epochs_run": len(h.epochs),
            "train_seconds": round(h.train_seconds, 3),
            "images_per_second": round(h.images_per_second, 1),
            "checkpoint": str(outcome.checkpoint),
            "test_accuracy": outcome.test_accuracy,
        }.items():
            trial.set_user_attr(key, value)

    def _skip_taken_grid_point(self, trial: optuna.Trial) -> None:
        """Prune, untrained, a grid trial whose point an earlier live trial already holds.

        Optuna's grid sampler, once every point has started, hands a worker a point that is
        still running elsewhere, in case that worker died. Here a dead worker's trial is
        retried from its checkpoint (heartbeats), so the duplicate would only train the same
        point twice: with 4 workers, up to 3 wasted trials at the end of every grid.
        """
        trials = trial.study.get_trials(deepcopy=False)
        point = next(t for t in trials if t.number == trial.number).system_attrs.get("grid_id")
        if point is None:
            return
        live = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)

        def pruned_after_training(other: optuna.trial.FrozenTrial) -> bool:
            return other.state == optuna.trial.TrialState.PRUNED and bool(other.intermediate_values)

        for other in trials:
            if (
                other.number < trial.number
                and other.system_attrs.get("grid_id") == point
                and (other.state in live or pruned_after_training(other))
            ):
                reason = f"grid point {point} is already trained by trial {other.number}"
                _prune_untrained(trial, GRID_DUPLICATE, other.number, reason)

    def _skip_over_budget(self, trial: optuna.Trial) -> None:
        """Prune, untrained and unsampled, a new search trial that the budget has no room for.

        ``search.n_trials`` is a global budget: a worker stops asking once every slot is
        taken, but two workers can ask at the same moment. Trial numbers are handed out in
        order by the storage, so the trials numbered below this one decide: if they already
        hold every slot (:func:`ranking.claims_budget`), this one is surplus. Retries
        (they replace a failed trial's slot) and confirmations are outside the budget.
        """
        trials = trial.study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        if not ranking.claims_budget(me) or "failed_trial" in me.system_attrs:
            return
        budget = self.spec.search.n_trials
        earlier = sum(t.number < trial.number and ranking.claims_budget(t) for t in trials)
        if earlier < budget:
            return
        reason = f"the budget of {budget} trials was taken by earlier trials when it started"
        _prune_untrained(trial, ranking.OVER_BUDGET, True, reason)

    def _skip_duplicate_confirmation(self, trial: optuna.Trial, of: int, seed: int) -> None:
        """Prune, untrained, a confirmation run that another trial already trains (two
        workers queued it at the same moment)."""
        other = confirm.duplicate_of(trial.study, trial.number, of, seed)
        if other is None:
            return
        reason = f"trial {other} already runs seed {seed} of trial {of}"
        _prune_untrained(trial, confirm.DUPLICATE, other, reason)

    def _check_constraints(self, trial: optuna.Trial, cost: dict[str, Any]) -> None:
        """Store the trial's constraint excesses; prune it, untrained, if it breaks a limit.

        The cost is known before training, so a trial over a limit costs no epoch.
        """
        limits = self.spec.search.constraints
        if not limits:
            return
        for metric, value in ranking.excess(cost, limits).items():
            trial.set_constraint(metric, value)
        reason = ranking.violation(cost, limits)
        if reason:
            trial.set_user_attr("prune_reason", reason)
            trial.set_user_attr("epochs_run", 0)
            log.info("trial %d pruned before training: %s", trial.number, reason)
            raise optuna.TrialPruned(reason)

    def _cost(self, spec: Spec) -> nets.Cost:
        """The trial's student, freshly built, measured on the worker's device."""
        model = nets.create(
            spec.student.arch, num_classes=self.ctx.num_classes, **spec.student.kwargs
        )
        side = spec.dataset.input_size
        nets.check_input_size(model, side, spec.student.arch)
        return nets.measure(model, (3, side, side), self.ctx.device)

    def _workdir(self, number: int) -> Path:
        """The folder of trial ``number``'s checkpoints: its resume state and best epoch."""
        return self.folder / f"trial-{number:05d}"

    def _discard(self, trial: optuna.Trial, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        self.store.drop(trial._trial_id, "last.pt")
        self.store.remove_all(trial.study, trial.study._storage.get_trial(trial._trial_id))


class _Reporter:
    """What a trial tells Optuna while it trains: each epoch's accuracy (for the pruner), loss
    terms, progress and epoch clock (:mod:`kdsearch.search.pace`), its files uploaded to the
    artifact store, and the epochs a killed attempt had finished when a retry resumes them.

    Optuna reports and prunes only single-objective trials; a confirmation is not pruned.
    """

    def __init__(
        self, trial: optuna.Trial, spec: Spec, store: CheckpointStore, workdir: Path, root: int
    ) -> None:
        self.trial = trial
        self.epochs = spec.train.epochs
        self.store = store
        self.workdir = workdir
        self.root = root
        self.single = len(spec.search.objectives) == 1
        self.prunable = self.single and ranking.CONFIRM_OF not in trial.user_attrs
        self.clock: dict[str, Any] | None = None

    def on_resume(self, history: History) -> None:
        """Re-report the epochs the killed attempt finished, so the pruner sees the curve."""
        for e in history.epochs if self.single else ():
            self.trial.report(e.val_accuracy, e.epoch)
        self.trial.set_user_attr("resumed_from_epoch", len(history.epochs))
        log.info(
            "trial %d resumes trial %d from epoch %d",
            self.trial.number,
            self.root,
            len(history.epochs),
        )

    def on_epoch(self, r: EpochResult, history: History) -> None:
        trial = self.trial
        self.store.push(trial.study, trial._trial_id, self.workdir / "last.pt")
        if history.best_epoch == r.epoch:  # best.pt was just rewritten
            self.store.push(trial.study, trial._trial_id, self.workdir / "best.pt")
        if self.single:
            trial.report(r.val_accuracy, r.epoch)
        names = dict.fromkeys(name for e in history.epochs for name in e.terms)
        terms = {name: [e.terms.get(name) for e in history.epochs] for name in names}
        trial.set_user_attr("loss_terms", terms)
        self.clock = pace.tick(self.clock, time.time())  # for status: when epochs were trained
        trial.set_user_attr(pace.CLOCK_ATTR, self.clock)
        rate = r.images / r.seconds if r.seconds else 0.0
        progress.epoch_done(
            trial.number, r.epoch, self.epochs, r.val_accuracy, history.best_val, rate
        )
        if self.prunable and trial.should_prune():
            trial.set_user_attr("epochs_run", len(history.epochs))
            raise optuna.TrialPruned(f"val accuracy {r.val_accuracy:.4f} at epoch {r.epoch + 1}")


def _copy_resume_state(earlier: list[Path], workdir: Path) -> None:
    """Copy the resume state (``last.pt`` and ``best.pt``) of the first folder in ``earlier``
    that has one into ``workdir``. Both are written atomically, so a copy is never torn."""
    for folder in earlier:
        if (folder / "last.pt").is_file():
            workdir.mkdir(parents=True, exist_ok=True)
            for name in ("best.pt", "last.pt"):  # last.pt last: it is what marks a resume
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, workdir / name)
            return


def _prune_untrained(trial: optuna.Trial, marker: str, value: Any, reason: str) -> None:
    """End ``trial`` as pruned before any epoch: ``marker`` (the user attribute that says why
    it counts apart) set to ``value``, the reason stored and logged."""
    trial.set_user_attr(marker, value)
    trial.set_user_attr("prune_reason", reason)
    trial.set_user_attr("epochs_run", 0)
    log.info("trial %d pruned before training: %s", trial.number, reason)
    raise optuna.TrialPruned(reason)
