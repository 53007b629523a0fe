"""Store URLs and file locks, shared by the MLflow side (vae.tracking) and the Optuna side (vae.tune).

Store URLs are SQLAlchemy URLs (sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, ...) or Optuna's
`journal:PATH`. Parsing and password redaction go through SQLAlchemy's own URL type, so a password holding
'@' or ':' is hidden whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from vae.errors import ConfigError, LockBusy

JOURNAL = "journal:"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db (MLflow 3's own default puts mlflow.db in
    the working directory; keeping it under mlruns/ leaves one folder to ignore)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'mlflow.db'}"


def default_study_storage() -> str:
    """$VAE_OPTUNA_STORAGE (a team's shared database), else the Optuna storage beside the MLflow store:
    sqlite:///<cwd>/mlruns/optuna.db."""
    return os.environ.get("VAE_OPTUNA_STORAGE") or f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'optuna.db'}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite:///PATH URL; None for other URLs and in-memory databases."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    return Path(url[len("sqlite:///") :])


def journal_path(url: str) -> Path | None:
    """The log file of Optuna's journal:PATH storage; None for other URLs."""
    return Path(url[len(JOURNAL) :]) if url.startswith(JOURNAL) else None


def local_file(url: str) -> Path | None:
    """The file behind a file-based store (SQLite or journal), where a file lock can serialise writers."""
    return sqlite_path(url) or journal_path(url)


def redact(url: str) -> str:
    """The URL without its password, for logs, tags and messages."""
    if url.startswith(JOURNAL) or "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable, e.g. a raw '@' or ':' in the password (valid URLs percent-encode them): everything
        # before the last '@' is credentials.
        scheme, _, rest = url.partition("://")
        if "@" not in rest:
            return url
        creds, _, host = rest.rpartition("@")
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


@contextmanager
def file_lock(path: str | Path, timeout: float = -1) -> Iterator[None]:
    """An exclusive lock held through `path` (created, with its folder). Released when the block ends,
    and by the operating system when the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


CHAMPION_WAIT_S = 300.0  # how long a writer of the champion waits for another before it gives up


def lock_url() -> str | None:
    """The PostgreSQL database whose advisory locks every host's writers share: $VAE_LOCK_URL, else the team's
    Optuna storage ($VAE_OPTUNA_STORAGE, as `make services` sets) when it is PostgreSQL, else None."""
    for url in (os.environ.get("VAE_LOCK_URL"), os.environ.get("VAE_OPTUNA_STORAGE")):
        if url and url.startswith("postgresql"):
            return url
    return None


@contextmanager
def champion_lock(name: str, tracking_uri: str, wait: float = CHAMPION_WAIT_S, what: str = "champion") -> Iterator[str]:
    """The one lock every writer of model `name`'s champion takes (the night's promotion, `vae registry
    promote|rollback`): a PostgreSQL advisory lock where there is a lock_url() (every host that reaches the
    database sees it, and it ends with the session of a writer that dies), else a file lock beside a SQLite
    tracking store (its one host, like SQLite itself), else one in ~/.cache/vae/locks (this host only).
    Yields which it is; LockBusy after `wait` s. what="registration": the lock of the night's find-then-create
    of a version, a separate one (a writer may hold both)."""
    key = f"vae-{what}:{name}"
    if url := lock_url():
        with _advisory_lock(url, key, wait):
            yield "postgresql advisory lock"
        return
    db = sqlite_path(tracking_uri)
    if (tracking_uri or "").startswith(("http://", "https://")):  # a server other hosts may write to as well
        logging.getLogger(__name__).warning(
            "the %s lock of %s is this host's only (no PostgreSQL to share: VAE_LOCK_URL): writers on other hosts "
            "of %s are not serialised with this one; set VAE_LOCK_URL to a PostgreSQL every writer reaches",
            what, name, redact(tracking_uri),
        )  # fmt: skip
    folder = db.parent if db else Path.home() / ".cache" / "vae" / "locks"
    path = folder / f"{what}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"
    try:
        with file_lock(path, timeout=wait):
            yield f"file lock {path}"
    except Timeout:
        raise _busy(key, wait) from None


def _busy(key: str, wait: float) -> LockBusy:
    what, name = key.removeprefix("vae-").split(":", 1)
    return LockBusy(
        f"another writer has held the {what} of {name} for over {wait:.0f} s (a night registering or promoting, "
        f"or `vae registry promote|rollback`): nothing was changed; try again when it is done"
    )


@contextmanager
def _advisory_lock(url: str, key: str, wait: float) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    k = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        try:
            conn = engine.connect()
        except SQLAlchemyError as e:
            reason = type(e).__name__  # not its text, which may show the URL's password
            raise ConfigError(f"the champion lock's database {redact(url)} is unreachable: {reason}") from None
        with conn:
            deadline = time.monotonic() + wait
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar():
                if time.monotonic() > deadline:
                    raise _busy(key, wait)
                time.sleep(0.2)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
    finally:
        engine.dispose()


def _started(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when there is no such live process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def holder(pid: int | None = None) -> dict[str, Any]:
    """Who holds a lock or runs a service: pid, host and start time, so that a pid the system gave to another
    process since (after a reboot, or once the pids wrap) is never taken for the holder."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "started": _started(pid)}


def holder_alive(old: dict[str, Any]) -> bool:
    """Whether the process a holder() record names still runs on this host: same pid, same start time (a
    record without one, written before start times were kept, is judged by its pid). Only for this host's
    records: another host's processes cannot be seen from here."""
    started = _started(int(old.get("pid") or 0))
    if started is None:
        return False
    return old.get("started") is None or abs(started - float(old["started"])) < 1.0
