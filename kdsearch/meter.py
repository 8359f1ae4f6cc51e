"""Progress of a long step (decoding an image folder): a bar for a person, lines for a log.

At a terminal the step draws a tqdm bar. Where stderr is a file or a pipe (a job's log, ``2>&1
| tee``) a bar's carriage returns would leave thousands of fragments, so the step writes a plain
line when it starts, one every :data:`EVERY_S` seconds, and one when it ends: a log shows
progress from the first second and never a torn bar. ``-q`` (kdsearch's loggers above INFO)
hides both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: Seconds between two progress lines in a log.
EVERY_S = 30.0


def at_terminal() -> bool:
    """Whether bars are drawn: stderr is a terminal and progress is not silenced (``-q``)."""
    return sys.stderr.isatty() and logging.getLogger("kdsearch").isEnabledFor(logging.INFO)


def _left(done: int, total: int, seconds: float) -> str:
    if done == 0:
        return "time left unknown"
    left = round(seconds * (total - done) / done)
    return f"{left // 60}m{left % 60:02d}s left" if left >= 60 else f"{left}s left"


@contextlib.contextmanager
def meter(total: int, what: str, unit: str, every: float = EVERY_S) -> Iterator[Callable[[], None]]:
    """Yields ``tick``, to be called once per item done (``what``: the step, ``unit``: what an
    item is, e.g. "train split", "images decoded")."""
    if at_terminal():
        from tqdm import tqdm

        with tqdm(total=total, desc=what, unit=unit.split()[0], leave=False) as bar:

            def step() -> None:
                bar.update()

            yield step
        return
    start = last = time.monotonic()
    done = 0
    log.info("%s: 0/%s %s", what, f"{total:,}", unit)

    def tick() -> None:
        nonlocal done, last
        done += 1
        now = time.monotonic()
        if now - last >= every and done < total:
            last = now
            pct, left = 100 * done // total, _left(done, total, now - start)
            log.info("%s: %s/%s %s (%d%%), %s", what, f"{done:,}", f"{total:,}", unit, pct, left)

    yield tick
    log.info("%s: %s %s in %.0fs", what, f"{done:,}", unit, time.monotonic() - start)
