"""The MLflow runs of a tuning study: a study run, and under it one run per trial, each trial a TrainingRun
(vae/tracking/live.py: the same live run as `vae train`, system metrics off).

A study run belongs to a study and to the night it ran in: `vae tune --parent-run-id NIGHT` (the pipeline)
hangs it under that night's run, and a study continued by a later night gets a new study run under the new
night, holding that night's trials. Without a parent (`vae tune` by hand) one run serves the study for as
long as it lives. vae.tune keeps the run's id with the study, so several workers, each with their own trials,
attach their trials to one study run; children are written through MlflowClient by explicit run id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag

from vae.config import Config
from vae.tracking.live import TrainingRun
from vae.tracking.models import log_model
from vae.tracking.runs import PARENT_TAG, STATE_TAG, STATUS, STUDY_KEY_TAG, source_tags
from vae.tracking.store import configure, experiment_id, open_client, tag_value, using_store


def _now_ms() -> int:
    return int(time.time() * 1000)


class StudyTracker:
    """The MLflow side of one tuning worker (rank 0 only). `seconds` adds up the time spent in MLflow calls
    made during trials, so the overhead of tracking can be set against training time."""

    def __init__(self, tracking_uri: str | None, experiment: str, night_id: str | None = None) -> None:
        self.uri = configure(tracking_uri)
        self.client = open_client(self.uri)
        self.experiment = experiment
        self.experiment_id = experiment_id(experiment, self.client)
        self.night_id = night_id
        self.parent_id: str | None = None
        self.seconds = 0.0

    def attach_parent(self, study_key: str, study: str, known_id: str | None, tags: Mapping[str, Any]) -> str:
        """Reuse the study's run when it belongs to this same night (or, without a night, always), or create
        it. The caller keeps its id with the study, and serialises this call across workers."""
        if known_id:
            try:
                run = self.client.get_run(known_id)
                if run.info.lifecycle_stage == "active" and run.data.tags.get(PARENT_TAG) == self.night_id:
                    self.parent_id = known_id
                    self.client.set_terminated(known_id, "RUNNING")
                    return known_id
                if run.info.status == "RUNNING":  # its night died before the study run was closed
                    self.client.set_tag(known_id, "error", "its night ended before this study run closed")
                    self.client.set_terminated(known_id, "FAILED")
            except mlflow.exceptions.MlflowException:
                pass  # deleted, or kept on another tracking server: start a new one here
        all_tags = {
            **source_tags(),
            "vae.step": "tune",
            STUDY_KEY_TAG: study_key,
            **{k: tag_value(v) for k, v in tags.items()},
        }
        if self.night_id:
            all_tags[PARENT_TAG] = self.night_id
        self.parent_id = self.client.create_run(self.experiment_id, run_name=study, tags=all_tags).info.run_id
        return self.parent_id

    def start_trial(
        self, number: int, cfg: Config, data_info: Mapping[str, Any], out: Path, params: Mapping[str, Any]
    ) -> TrainingRun:
        """A trial's live run under the study run: the config as params, plus the drawn `params` by their
        names in the search space."""
        t0 = time.perf_counter()
        run = TrainingRun(
            self.uri,
            self.experiment,
            cfg,
            out,
            data_info,
            system_metrics=False,  # a trial lasts seconds to minutes: the study's cost is in its trials
            images_every=0,  # nor epoch images: dozens of trials; the candidate's own run has its figures
            parent_id=self.parent_id,
            run_name=f"trial-{number}",
            tags={"vae.step": "trial", "optuna.trial_number": number, STATE_TAG: "running"},
            extra_params=params,
            client=self.client,
        )
        self.seconds += time.perf_counter() - t0
        return run

    def end_trial(
        self, run: TrainingRun, state: str, metrics: Mapping[str, float] = (), reason: str | None = None
    ) -> None:
        """The trial's state (complete, pruned, fail) as a tag, its final metrics, and its run's status."""
        t0 = time.perf_counter()
        ts = _now_ms()
        final = [Metric(f"final_{k}", float(v), ts, 0) for k, v in dict(metrics).items()]
        if final:
            self.client.log_batch(run.run_id, metrics=final)
        run.end(STATUS[state], {STATE_TAG: state, **({"reason": reason} if reason else {})})
        self.seconds += time.perf_counter() - t0 + run.epoch_log_seconds

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
        """Log the study's figures and trial table (the files in `folder`) and its summary on the study run."""
        ts = _now_ms()
        self.client.log_artifacts(self.parent_id, str(folder))
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag(k, tag_value(v)) for k, v in tags.items()],
        )
        self.client.set_terminated(self.parent_id, "FINISHED")

    def log_model(self, run_id: str, checkpoint: Path) -> tuple[str, str]:
        """Log a trial's checkpoint as the pyfunc model of its run; returns the model URI and id."""
        was_status = self.client.get_run(run_id).info.status
        with using_store(self.uri), mlflow.start_run(run_id=run_id):
            info = log_model(checkpoint)
        self.client.set_terminated(run_id, was_status if was_status != "RUNNING" else "FINISHED")
        self.client.set_tag(self.parent_id, "best_model_uri", info.model_uri)
        self.client.set_tag(run_id, "model_id", info.model_id)
        return info.model_uri, info.model_id
