"""The MLflow run tree of a tuning study: one parent run per study, a child run per trial.

Children are written through MlflowClient by explicit run id, so several workers, each with their own
trials, can share one parent (vae.tune keeps its id with the study). Per-epoch metrics go in one log_batch
call per epoch: no per-step logging.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking.context.registry import resolve_tags

from vae.tracking.models import log_model
from vae.tracking.store import configure, experiment_id, open_client, using_store

STATE_TAG = "state"  # complete | pruned | fail | running: MLflow's run status has no "pruned"
STUDY_KEY_TAG = "vae.study_key"
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "FAILED"}


def source_tags() -> dict[str, str]:
    """MLflow's own context tags for a run created through the client (the fluent API adds them itself):
    mlflow.source.name/type, mlflow.user, and mlflow.source.git.commit when the code runs from a checkout."""
    return {k: str(v) for k, v in resolve_tags().items()}


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
        all_tags = {**source_tags(), STUDY_KEY_TAG: study_key, **{k: str(v)[:5000] for k, v in tags.items()}}
        self.parent_id = self.client.create_run(self.experiment_id, run_name=study, tags=all_tags).info.run_id
        return self.parent_id

    def start_trial(self, number: int, params: Mapping[str, Any], extra_params: Mapping[str, Any]) -> str:
        t0 = time.perf_counter()
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.parent_id, "optuna.trial_number": str(number), STATE_TAG: "running"},
        )
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
        self.client.log_batch(
            run_id, metrics=[Metric(f"final_{k}", float(v), ts, 0) for k, v in dict(metrics).items()], tags=tags
        )
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
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )
        self.client.set_terminated(self.parent_id, "FINISHED")

    def log_model(self, run_id: str, checkpoint: Path) -> str:
        """Log a trial's checkpoint as the pyfunc model of its child run; returns the model URI."""
        was_status = self.client.get_run(run_id).info.status
        with using_store(self.uri), mlflow.start_run(run_id=run_id):
            info = log_model(checkpoint)
        self.client.set_terminated(run_id, was_status if was_status != "RUNNING" else "FINISHED")
        self.client.set_tag(self.parent_id, "best_model_uri", info.model_uri)
        return info.model_uri


def space_tag(space: Mapping[str, Any]) -> str:
    return json.dumps(space, sort_keys=True)


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}: nested configs as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dataset_input(info: Mapping[str, Any], context: str) -> DatasetInput:
    """A data set as an MLflow dataset input: name, where it came from, digest = the project's fingerprint
    (first 36 characters, the width MLflow stores; the whole one is the `fingerprint` tag), split sizes."""
    source = str(info.get("source", ""))
    if source.startswith(("idx:", "folder:")):  # a data set named by its folder: the folder is the source
        source = source.split(":", 1)[1]
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore")
        local = source.startswith("/")
        src = resolve_dataset_source(source) if local else CodeDatasetSource({"mlflow.source.name": source})
    entity = MetaDataset(src, name=str(info["dataset"]), digest=str(info["fingerprint"])[:36])._to_mlflow_entity()
    sizes = {f"{k}_images": str(v["size"]) for k, v in info.get("splits", {}).items()}
    tags = {"mlflow.data.context": context, "fingerprint": str(info["fingerprint"]), **sizes}
    return DatasetInput(entity, tags=[InputTag(k, v) for k, v in tags.items()])
