"""MLflow for the project: where runs go, and the run tree of a tuning study.

Default store: `sqlite:///<cwd>/mlruns/mlflow.db` with artifacts under `<cwd>/mlruns/artifacts` (MLflow 3's
own default puts mlflow.db in the working directory; keeping both under mlruns/ leaves one folder to ignore).
Any tracking URI works, a remote `mlflow server` included. Nothing happens at import: folders are made
and the URI is set only when a function is called.

A study is one parent run; each trial is a child run (tag mlflow.parentRunId) written through MlflowClient
by explicit run id, so several workers, each with their own trials, can share one parent (vae.tune keeps
its id with the study). Per-epoch
metrics go in one log_batch call per epoch: no per-step logging.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

STATE_TAG = "state"  # complete | pruned | fail | running: MLflow's run status has no "pruned"
STUDY_KEY_TAG = "vae.study_key"
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "FAILED"}


def default_tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return Path.cwd().resolve() / "mlruns" / "artifacts"


def configure(tracking_uri: str | None) -> str:
    """Point mlflow (fluent API and new clients) at tracking_uri, or the default; returns the URI."""
    uri = tracking_uri or default_tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in worker logs
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        return Path(uri[len("sqlite:///"):])
    return None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created). Two processes that first touch a fresh SQLite store at the
    same moment both run its schema migrations; this serialises that first contact."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_client(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for tracking_uri (default: mlflow's current URI). Its constructor opens the store,
    which on a fresh SQLite file creates the tables: serialised, or two workers starting together collide."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    db = _sqlite_path(uri)
    with file_lock(db.with_suffix(".lock")) if db is not None else _nothing():
        return MlflowClient(uri)


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    """Id of experiment `name`, created if missing. With a local SQLite store its artifacts go beside the
    database, in artifacts/<name> (mlruns/artifacts/<name> by default), not in MLflow's cwd-relative ./mlruns;
    with a server, where the server decides."""
    client = client or open_client()
    db = _sqlite_path(client.tracking_uri)
    with file_lock(db.with_suffix(".lock")) if db is not None else _nothing():  # names are unique: create once
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if db is not None:
            location = (db.resolve().parent / "artifacts" / re.sub(r"[^\w.-]", "_", name)).as_uri()
        return client.create_experiment(name, artifact_location=location)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:6000]) for k, v in values.items()]


class StudyTracker:
    """The MLflow side of one tuning worker (rank 0 only). `seconds` adds up the time spent in MLflow calls
    made during trials, so the overhead of tracking can be set against training time."""

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        self.uri = configure(tracking_uri)
        self.client = open_client(self.uri)
        self.experiment_id = experiment_id(experiment, self.client)
        self.parent_id: str | None = None
        self.seconds = 0.0

    def attach_parent(self, study_key: str, study: str, known_id: str | None, tags: Mapping[str, Any]) -> str:
        """Reuse the study's parent run (the caller keeps its id with the study, and serialises this call
        across workers), or create it."""
        if known_id:
            try:
                run = self.client.get_run(known_id)
                if run.info.lifecycle_stage == "active":
                    self.parent_id = known_id
                    self.client.set_terminated(known_id, "RUNNING")
                    return known_id
            except mlflow.exceptions.MlflowException:
                pass  # deleted, or kept on another tracking server: start a new parent here
        all_tags = {STUDY_KEY_TAG: study_key, **{k: str(v)[:5000] for k, v in tags.items()}}
        self.parent_id = self.client.create_run(self.experiment_id, run_name=study, tags=all_tags).info.run_id
        return self.parent_id

    def start_trial(self, number: int, params: Mapping[str, Any], extra_params: Mapping[str, Any]) -> str:
        t0 = time.perf_counter()
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}",
                                     tags={"mlflow.parentRunId": self.parent_id, "optuna.trial_number": str(number),
                                           STATE_TAG: "running"})
        self.client.log_batch(run.info.run_id, params=_params({**params, **extra_params}))
        self.seconds += time.perf_counter() - t0
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, row: Mapping[str, float]) -> None:
        t0 = time.perf_counter()
        ts = _now_ms()
        metrics = [Metric(k, float(v), ts, epoch) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(run_id, metrics=metrics)
        self.seconds += time.perf_counter() - t0

    def end_trial(self, run_id: str, state: str, metrics: Mapping[str, float] = (), reason: str | None = None) -> None:
        t0 = time.perf_counter()
        tags = [RunTag(STATE_TAG, state)] + ([RunTag("reason", reason[:5000])] if reason else [])
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(f"final_{k}", float(v), ts, 0) for k, v in dict(metrics).items()],
                              tags=tags)
        self.client.set_terminated(run_id, STATUS[state])
        self.seconds += time.perf_counter() - t0

    def close_orphan(self, run_id: str, reason: str) -> None:
        """A child run left RUNNING by a worker that died: mark it failed, as its trial is."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return
        if run.info.status == "RUNNING":
            self.client.log_batch(run_id, tags=[RunTag(STATE_TAG, "fail"), RunTag("reason", reason)])
            self.client.set_terminated(run_id, "FAILED")

    def finish_parent(self, folder: Path, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        """Log the study's figures and trial table (the files in `folder`) and its summary on the parent."""
        ts = _now_ms()
        self.client.log_artifacts(self.parent_id, str(folder))
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        self.client.set_terminated(self.parent_id, "FINISHED")

    def log_model(self, run_id: str, checkpoint: Path) -> str:
        """Log a trial's checkpoint as the pyfunc model of its child run; returns the model URI."""
        from vae.serving import log_model
        was_status = self.client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            info = log_model(checkpoint)
        self.client.set_terminated(run_id, was_status if was_status != "RUNNING" else "FINISHED")
        self.client.set_tag(self.parent_id, "best_model_uri", info.model_uri)
        return info.model_uri


def space_tag(space: Mapping[str, Any]) -> str:
    return json.dumps(space, sort_keys=True)
