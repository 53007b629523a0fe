"""Where a study lives and how workers share it: storages, the ask lock, the trial count.

Many workers (`vae tune` processes, each possibly a torchrun job) may share one study: before each trial rank 0
counts the study's trials, under a lock held until its new trial exists, and stops at `n_trials`. (Where no
lock is available, a MySQL storage say, a trial created past the count in a race is recorded as failed with
the user attribute `surplus` and not counted.) With an RDB storage, trials send heartbeats: a worker killed
mid-trial leaves a trial that the next worker marks failed and re-queues with the same parameters
(RetryHeartbeatStaleTrialCallback), so a rerun of the same command completes the study.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from filelock import FileLock
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from vae.errors import ConfigError
from vae.stores import file_lock, journal_path, local_file, redact, sqlite_path


def open_storage(url: str, heartbeat: int | None = 30) -> optuna.storages.BaseStorage:
    """`journal:PATH` (Optuna's journal file; no heartbeats), or any SQLAlchemy URL (sqlite:///PATH,
    postgresql://...). Heartbeats every `heartbeat` s; a trial silent for 2x that is failed and retried."""
    try:
        journal = journal_path(url)
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs = {
                "heartbeat_interval": heartbeat,
                "grace_period": 2 * heartbeat,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _rdb_storage(url, kwargs)
    except ConfigError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"storage {redact(url)} cannot be opened ({type(e).__name__}: {msg[:300]}): expected "
            f"sqlite:///PATH, a reachable postgresql://USER@HOST/DB, or journal:PATH"
        ) from None


def _rdb_storage(url: str, kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    db = sqlite_path(url)
    if db is not None:  # several workers write to one file; the first contact creates its tables, one at a time
        db.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(db.with_name(db.name + ".lock")):
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}, **kwargs)
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Two workers creating the tables of a fresh database at once: the loser finds them next time.
            if attempt == 3:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


class AskLock:
    """Held by a worker's rank 0 from counting the study's trials until its new trial exists, so two workers
    cannot both see n-1 trials and both start one (and while it finds or makes the study's MLflow parent
    run). A file lock beside a SQLite or journal file, an advisory lock in PostgreSQL; other databases get
    none (a trial created past the count is then marked surplus). release() is safe when not held."""

    def __init__(self, url: str, study: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)
        file = local_file(url)
        self.file = FileLock(f"{file}.{self.key & 0xFFFFFFFF:x}.ask.lock") if file is not None else None
        self.conn = None
        self.held = False

    def acquire(self) -> None:
        if self.file is not None:
            self.file.acquire()
        elif self.url.startswith("postgresql"):
            if self.conn is None:
                self.conn = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool).connect()
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self.conn.commit()
            self.held = True

    def release(self) -> None:
        if self.file is not None:
            self.file.release(force=True)
        elif self.held:
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.conn.commit()
            self.held = False


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that make up the study's count: not surplus ones, not failed ones that a retry replaced."""
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if not t.user_attrs.get("surplus") and not (t.state == TrialState.FAIL and t.number in replaced)
    ]


def next_action(study: optuna.Study, n_trials: int, deadline: float | None, heartbeat: bool) -> str:
    """run (another trial), wait (for a trial running elsewhere that may yet be re-queued), or stop."""
    if deadline is not None and time.time() >= deadline:
        return "stop"
    if heartbeat:  # a killed worker's trial becomes FAIL and is re-queued as WAITING
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials) or len(counted(trials)) < n_trials:
        return "run"
    # The count is reached, but a trial still running elsewhere may yet die and be re-queued: wait for it.
    if heartbeat and any(t.state == TrialState.RUNNING for t in trials):
        return "wait"
    return "stop"
