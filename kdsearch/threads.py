"""How many CPU threads torch uses: ``--threads N`` or ``KDSEARCH_THREADS``, for every command.

Several kdsearch processes on one CPU host (workers in containers, a ``train`` beside a
search) each default to every core, and together run cores x processes threads, which slows
every one of them many times over (OpenMP threads spin). The count is put in the environment
before anything imports torch, as ``OMP_NUM_THREADS`` too: torch sizes its thread pool from it
at import, and worker processes inherit it.
"""

from __future__ import annotations

import os
import sys

from kdsearch.errors import KDSearchError

ENV = "KDSEARCH_THREADS"


def parse(text: str, source: str) -> int:
    """``text`` as a thread count (a whole number >= 1); ``source`` names where it came from."""
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise KDSearchError(f"{source} {text!r}: a thread count is a whole number >= 1, e.g. 2")
    return threads


def from_env() -> int | None:
    """``KDSEARCH_THREADS`` as a thread count, None when unset or empty: what a worker started
    from Python (``kdsearch.api.run_workers``, no CLI to parse it first) reads, so a bad value
    is the same one line there as at the command line."""
    text = os.environ.get(ENV)
    return parse(text, ENV) if text else None


def configure(flag: str | None) -> int | None:
    """Set the thread count from ``--threads`` (``flag``), else from ``KDSEARCH_THREADS``, into
    the environment torch and worker processes read; the count, or None when neither is set."""
    text, source = (flag, "--threads") if flag is not None else (os.environ.get(ENV), ENV)
    if not text:
        return None
    threads = parse(text, source)
    os.environ[ENV] = os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:  # imported already (main called from Python): resize its pool
        torch.set_num_threads(threads)
    return threads
