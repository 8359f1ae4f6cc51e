"""What a worker tells the person watching it: one line per epoch, per trial, and a summary.

Lines go through the standard ``logging`` module in one format, Optuna's included (its own
handler is removed and its records propagate to ours). Optuna's INFO line per finished trial
("Trial 3 finished with value ... and parameters {... 16 digits ...}") repeats ours, so
Optuna logs at WARNING unless ``-v`` is given. Where stderr is a terminal, each trial also
draws a tqdm bar and log lines are written through ``tqdm.write`` so they do not tear it.

The verbosity travels to worker processes in ``KDSEARCH_VERBOSITY`` (-1 quiet, 0, 1 verbose).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

VERBOSITY_ENV = "KDSEARCH_VERBOSITY"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}

log = logging.getLogger("kdsearch.search.progress")


def verbosity() -> int:
    """-1 (``-q``), 0 or 1 (``-v``), as set by :func:`configure` in this or a parent process."""
    try:
        return max(-1, min(1, int(os.environ.get(VERBOSITY_ENV, "0"))))
    except ValueError:
        return 0


def show_bar() -> bool:
    """A per-trial progress bar only for a person at a terminal, and not with ``-q``."""
    return sys.stderr.isatty() and verbosity() >= 0


class _TqdmHandler(logging.StreamHandler):
    """Writes above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure(level: int | None = None, worker: int | None = None) -> None:
    """One handler and format for every logger; ``level`` is a verbosity (-1, 0, 1).

    The verbosity sets kdsearch's loggers (and, in :func:`route_optuna`, Optuna's); every
    other library logs warnings and errors only, at any verbosity: their INFO and DEBUG lines
    (matplotlib building its font cache on a new machine, say) are not the user's business,
    and would break the one-line promise of an error. Called once a command has been parsed
    (so ``--help`` never imports Optuna)."""
    if level is not None:
        os.environ[VERBOSITY_ENV] = str(level)
    level = verbosity()
    who = f"worker{worker} " if worker is not None else ""
    handler = _TqdmHandler(sys.stderr) if sys.stderr.isatty() else logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {who}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("kdsearch").setLevel(LEVELS[level])
    route_optuna()


def route_optuna() -> None:
    """Send Optuna's records through our handler; its per-trial INFO line only with -v."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.INFO if verbosity() > 0 else logging.WARNING)


def fmt(value: Any) -> str:
    """A number with 4 significant digits (1e-4 and below in scientific notation)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 epoch", "3 epochs", "0 trials"."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def fmt_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in sorted(params.items()))


def fmt_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def epoch_done(trial: int, epoch: int, epochs: int, val: float, best: float, rate: float) -> None:
    """One INFO line per finished epoch (``epoch`` counts from 0, printed from 1)."""
    log.info(
        "trial %d epoch %d/%d: val %.4f, best %.4f, %s img/s",
        trial,
        epoch + 1,
        epochs,
        val,
        best,
        f"{rate:,.0f}",
    )


def trial_done(study: Any, trial: Any) -> None:
    """Optuna callback: one line per finished trial (state, value, parameters, time); a
    baseline arm's trials say so, since one worker runs both arms of a study."""
    value = "-" if not trial.values else f"{trial.values[0]:.4f}"
    took = fmt_seconds(trial.duration.total_seconds()) if trial.duration else "?"
    epochs = trial.user_attrs.get("epochs_run", len(trial.intermediate_values))
    of = trial.user_attrs.get("confirm_of")
    what = f"seed {trial.user_attrs.get('seed')} of trial {of}" if of is not None else ""
    from kdsearch.search.study import BASELINE_OF_ATTR

    arm = "baseline " if study.user_attrs.get(BASELINE_OF_ATTR) else ""
    log.info(
        "%strial %d %s: val %s after %s in %s (%s)",
        arm,
        trial.number,
        trial.state.name.lower(),
        value,
        count(epochs, "epoch"),
        took,
        what or fmt_params(trial.params),
    )
