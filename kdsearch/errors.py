"""The one error type users see.

Every problem a user can fix (bad spec, missing data, wrong checkpoint, unreachable database)
is raised as :class:`KDSearchError` with a one-line message that names the problem and the fix.
The CLI prints it as ``kdsearch: error: <message>`` and exits with code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable


class KDSearchError(Exception):
    """A user-fixable problem; ``str(err)`` is one line naming the problem and the fix."""

    exit_code = 2


def unknown_name(what: str, name: str, allowed: Iterable[str]) -> KDSearchError:
    """An error for a name outside a registry, suggesting the nearest valid one."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(name), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return KDSearchError(f"{what}: unknown {name!r}{hint} (choose from {', '.join(allowed)})")


def report_errors(fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a user-fixable error becomes one line on stderr and its exit code (2).

    Shared by the CLI and the worker processes it starts, so both print errors alike.
    """
    try:
        code = fn() or 0
        sys.stdout.flush()  # here, so that a reader that left is handled below, not at exit
        return code
    except KDSearchError as err:
        print(f"kdsearch: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("kdsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`kdsearch validate spec | head`): stop quietly, as cat does. stdout
        # now points at /dev/null so that Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
