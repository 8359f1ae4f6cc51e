"""A run of ``train`` or ``train-teacher`` that survives being stopped, as a trial does.

A teacher can train for hours. Its resume state lives beside the output, in
``.<out>.partial.d/``: the loop's own per-epoch ``last.pt`` (:class:`~kdsearch.training.loop.
TrainingState`, the same file and code a trial resumes from) and ``best.pt``, the best epoch so
far. Run the same command again after a crash, a SIGKILL or a Ctrl-C and it goes on from the
last finished epoch, to the checkpoint the uninterrupted run would have written (CPU training
is deterministic for a seed). The state is tagged with a hash of the spec and of the ``--init``
checkpoint: a changed spec does not continue the old run, it says so in one line and starts
from epoch 0. Only a finished run moves ``best.pt`` to the output and removes the folder, so a
file at the output is always a finished model.

SIGINT and SIGTERM stop the run between two batches (an epoch can take minutes), keep the
state of the last finished epoch, and end in one line saying how to resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdsearch.config.spec import Spec
from kdsearch.errors import KDSearchError
from kdsearch.training.experiment import Context, Outcome, fit_student
from kdsearch.training.loop import EpochResult, History, StopRequested

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KDSearchError):
    """The run was stopped by a signal; its exit code is the shell's for that signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def state_folder(out: Path) -> Path:
    """Where the resume state of a run writing ``out`` lives (hidden, beside it)."""
    return out.with_name(f".{out.name}.partial.d")


def run_tag(spec: Spec, init: Path | None) -> dict[str, Any]:
    """What a resume state must match: the spec (seed included) and the initial weights.

    Hashes, so the tag neither holds nor logs anything from the spec; the storage URL is left
    out, since where a study is stored does not change what trains.
    """
    data = spec.public_dict()
    data.pop("storage", None)
    text = json.dumps(data, sort_keys=True, default=str)
    tag: dict[str, Any] = {"spec": hashlib.sha256(text.encode()).hexdigest()[:16], "init": None}
    if init is not None:
        h = hashlib.sha256()
        with open(init, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        tag["init"] = h.hexdigest()[:16]
    return tag


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, int]]:
    """SIGINT and SIGTERM noted instead of raised, so the loop stops between two batches.

    Yields a dict that holds ``"signum"`` once a signal came. Outside the main thread (a
    notebook's worker thread) handlers cannot be set, and signals keep their usual effect.
    """
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def note(signum: int, _frame: Any) -> None:
        caught["signum"] = signum

    previous = {sig: signal.signal(sig, note) for sig in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_to(ctx: Context, spec: Spec, out: Path, init: Path | None = None) -> Outcome:
    """Train ``spec``'s student to ``out``, resuming from and keeping state beside it."""
    folder = state_folder(out)
    epochs = spec.train.epochs
    done = [0]  # epochs finished, restored ones included: what a stop keeps

    def epoch_done(result: EpochResult, history: History) -> None:
        done[0] = len(history.epochs)
        rate = result.images / result.seconds if result.seconds else 0.0
        log.info(
            "epoch %d/%d: loss %.4f, val %.4f, best %.4f, %s img/s",
            result.epoch + 1,
            epochs,
            result.train_loss,
            result.val_accuracy,
            history.best_val,
            f"{rate:,.0f}",
        )

    def resumed(history: History) -> None:
        done[0] = len(history.epochs)
        log.info("resuming from %s: %d of %d epochs done", folder, done[0], epochs)

    with stop_on_signals() as caught:
        try:
            outcome = fit_student(
                ctx,
                spec,
                folder / "best.pt",
                workdir=folder,
                on_epoch=epoch_done,
                on_resume=resumed,
                resume_tag=run_tag(spec, init),
                should_stop=lambda: "signum" in caught,
                init=init,
            )
        except StopRequested:
            raise _interrupted(folder, done[0], caught["signum"]) from None
    (folder / "best.pt").replace(out)
    shutil.rmtree(folder, ignore_errors=True)
    return replace(outcome, checkpoint=out)


def _interrupted(folder: Path, done: int, signum: int) -> Interrupted:
    """The one line a stopped run ends with: how far it got and how to go on."""
    name = signal.Signals(signum).name
    if done == 0:
        return Interrupted(f"{name}: interrupted in epoch 1, before any epoch finished", signum)
    return Interrupted(
        f"{name}: interrupted after epoch {done} (state in {folder}); run the same command "
        "to resume",
        signum,
    )
