"""Store URLs and file locks, shared by the MLflow side (vae.tracking) and the Optuna side (vae.tune).

Store URLs are SQLAlchemy URLs (sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, ...) or Optuna's
`journal:PATH`. Parsing and password redaction go through SQLAlchemy's own URL type, so a password holding
'@' or ':' is hidden whole.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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
