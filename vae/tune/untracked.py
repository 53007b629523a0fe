"""A study without MLflow: `vae tune --no-tracking`. NullTracker has the interface of
vae.tracking.study.StudyTracker that the study uses (objective.py, study.py, summary.py) and does nothing, so
the trials run, and are timed, with mlflow neither called nor imported (a machine without it, a benchmark of
the trials alone). The study itself is unchanged: Optuna's storage still holds every trial."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vae.config import Config


class NullRun:
    """A trial's run that logs nothing: StudyTracker.start_trial's TrainingRun, minus MLflow."""

    run_id: str | None = None
    epoch_log_seconds = 0.0

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        pass


class NullTracker:
    """No study run, no trial runs, no model; `uri` None says tracking is off."""

    uri: str | None = None
    experiment_id: str | None = None
    parent_id: str | None = None
    seconds = 0.0  # no time spent in MLflow

    def attach_parent(self, study_key: str, study: str, known_id: str | None, tags: Mapping[str, Any]) -> None:
        return None

    def start_trial(
        self, number: int, cfg: Config, data_info: Mapping[str, Any], out: Path, params: Mapping[str, Any]
    ) -> NullRun:
        return NullRun()

    def end_trial(self, run: NullRun, state: str, metrics: Mapping[str, float] = (), reason: str | None = None) -> None:
        pass

    def close_orphan(self, run_id: str, reason: str) -> None:
        pass

    def finish_parent(self, folder: Path, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        pass

    def log_model(self, run_id: str, checkpoint: Path) -> None:
        return None
