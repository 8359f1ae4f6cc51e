"""Opening the study database: which URL, how it is tuned, and errors a user can act on.

The URL comes from ``--storage``, else ``KDSEARCH_STORAGE``, else the file that
``KDSEARCH_STORAGE_FILE`` names (:mod:`kdsearch.search.storage_file`), else the spec's
``storage``, else ``sqlite:///kdsearch.db``. It is always Optuna's own storage (RDB, or its
gRPC proxy for very many workers); kdsearch adds only tuning:

- SQLite: WAL journal (readers never block the writer) and a 60 s busy timeout, so several
  worker processes on one machine do not fail with "database is locked".
- PostgreSQL: pre-pinged pooled connections (a restarted server costs a reconnect, not a
  crash) and a small pool per worker, so many workers do not exhaust ``max_connections``.
- Heartbeats: a worker killed mid-trial has its trial failed after the grace period by the
  next worker that asks for a trial, and re-queued with the same parameters.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import warnings
from typing import Any

from kdsearch.errors import KDSearchError
from kdsearch.redact import UNPARSEABLE, mask_url, scrub
from kdsearch.search import storage_file

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///kdsearch.db"
ENV = "KDSEARCH_STORAGE"


def resolve_url(cli: str | None = None, spec_url: str | None = None) -> str:
    return cli or os.environ.get(ENV) or storage_file.from_env() or spec_url or DEFAULT_URL


def mask(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print and log; never raises."""
    return mask_url(url)


def _where(url: str) -> str:
    """The server a URL names, as host:port, read the way SQLAlchemy reads it (a password may
    hold ``/``, ``?`` or ``#``); never raises."""
    from sqlalchemy.engine import make_url

    try:
        parts = make_url(url)
        if parts.drivername.startswith("sqlite"):
            return f"SQLite file {parts.database}"
        return f"{parts.host or 'localhost'}:{parts.port or 'default port'}"
    except Exception:
        return UNPARSEABLE


def _parse(url: str) -> None:
    """Refuse a URL SQLAlchemy cannot read, or would read wrongly, before connecting."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite") and url.count("@") > 1:
        raise KDSearchError(
            f"storage: the user or password in {mask(url)} holds an unescaped '@', which makes "
            "the host ambiguous; write it as %40 (percent-encode the password)"
        )
    try:
        make_url(url)
    except Exception:
        raise KDSearchError(
            f"storage: {mask(url)} is not a database URL "
            "(use sqlite:///FILE.db, postgresql://USER@HOST:PORT/DB or grpc://HOST:PORT)"
        ) from None


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    return None if not path or path == ":memory:" else path


def _prepare_sqlite(url: str) -> None:
    path = _sqlite_path(url)
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise KDSearchError(f"storage: folder {folder} for {mask(url)} does not exist; create it")
    # WAL is a property of the database file: set once, every later connection uses it. Even a
    # reader needs write access: WAL keeps its index in files beside the database. access()
    # also sees what permissions do not stop root from: an immutable file, a read-only mount.
    unwritable = [p for p in (path, folder) if os.path.exists(p) and not os.access(p, os.W_OK)]
    reason = f"{unwritable[0]} is read-only" if unwritable else None
    if reason is None:
        try:
            with sqlite3.connect(path, timeout=60) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as err:
            reason = str(err)
    if reason is not None:
        raise KDSearchError(
            f"storage: cannot open SQLite file {path} ({reason}); the file and its folder "
            f"{folder} must be writable (kdsearch needs them even to read a study)"
        )


def require_existing(url: str) -> None:
    """For commands that only read studies: a SQLite file that does not exist is a typo, and
    opening it would leave an empty database behind."""
    path = _sqlite_path(url)
    if path is not None and not os.path.isfile(path):
        raise KDSearchError(
            f"storage: no such database file {path} ({mask(url)}); check --storage / {ENV}"
        )


def close(storage: Any) -> None:
    """Give back a storage's database connections now (a worker's spec-loading storage, the
    ``kdsearch worker`` command's own before it waits on its workers), not at exit."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def engine_kwargs(url: str) -> dict[str, Any]:
    """Per process: at most ``pool_size + max_overflow`` (4) connections, 2 in steady use (the
    worker's queries and its heartbeat thread)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {
        "pool_pre_ping": True,
        "pool_size": 2,
        "max_overflow": 2,
        "pool_recycle": 300,
        "connect_args": {"connect_timeout": 10} if url.startswith("postgresql") else {},
    }


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int | None = None,
    existing: bool = False,
) -> Any:
    """Optuna storage for ``url``; heartbeats and retries on when an interval is given.

    ``existing``: the caller only reads or runs studies already created, so a SQLite file must
    exist (see :func:`require_existing`).
    """
    import optuna
    import sqlalchemy.exc

    if existing:
        require_existing(url)

    if url.startswith("grpc://"):
        if heartbeat_interval:
            log.warning(
                "heartbeats do not pass through Optuna's gRPC proxy: a killed worker's trial "
                "stays RUNNING (a stopped one is still re-queued); use a database URL for that"
            )
        netloc = url.removeprefix("grpc://").partition("/")[0]
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "13000")
        if not host or not port.isdigit():
            what = "names no host" if not host else f"has port {port!r}, not a number"
            raise KDSearchError(f"storage: {mask(url)} {what}; use grpc://HOST:PORT")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    _parse(url)
    if url.startswith("sqlite"):
        _prepare_sqlite(url)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retries
            ),
        }
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **heartbeat)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as err:
        reason = scrub(str(getattr(err, "orig", err)).strip().splitlines()[0], url)
        if "too many clients" in reason or "too many connections" in reason:
            raise KDSearchError(
                f"storage: the database at {_where(url)} refused a connection ({reason}): "
                "every connection slot is taken; each worker holds up to 4, so raise "
                "PostgreSQL's max_connections (or the role's limit), run fewer workers, or "
                "put `kdsearch storage-proxy` in front of the database (docs/scale-out.md)"
            ) from None
        raise KDSearchError(
            f"storage: cannot reach the database at {_where(url)} ({mask(url)}): {reason}; "
            "start the server or fix --storage / KDSEARCH_STORAGE"
        ) from None
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise KDSearchError(
            f"storage: no driver for {mask(url)} ({scrub(str(err), url)})"
        ) from None
    except RuntimeError as err:
        # Optuna raises RuntimeError for a schema written by another Optuna version.
        reason = scrub(str(err).splitlines()[0], url)
        raise KDSearchError(f"storage: {mask(url)}: {reason}") from None
