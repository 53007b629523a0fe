"""A training run in MLflow as it happens: `vae train --tracking-uri/--experiment` (and the pipeline).

Params and the data set (a dataset input whose digest is the project's fingerprint) at the start, each
epoch's metrics as the epoch ends (the run is a fit() callback: the training loop itself knows nothing of
MLflow), CPU/memory (and GPU) system metrics beside them, the history and figures at the end, and the
run's status: FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM. Rank 0 only, so a DDP job is one
run. A resumed training run continues its MLflow run: the run id is kept in OUT/mlflow_run.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from vae.config import Config
from vae.tracking.runs import dataset_input, flat, source_tags
from vae.tracking.store import configure, experiment_id, open_client

MARKER = "mlflow_run.json"
SYSTEM_METRICS_SECONDS = 5.0


class TrainingRun:
    """Use as a context manager around fit(), passing the object itself as a callback."""

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        cfg: Config,
        out: Path,
        data_info: Mapping[str, Any],
        resume: bool = False,
        system_metrics: bool | None = None,
    ) -> None:
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
        self.uri = configure(uri)
        self.client = open_client(self.uri)
        self.out, self.marker = Path(out), Path(out) / MARKER
        self.run_id = self._continued() if resume else None
        self.resumed = self.run_id is not None
        if self.run_id is None:
            tags = {
                **source_tags(),
                "vae.step": "train",
                "dataset": str(data_info["dataset"]),
                "fingerprint": str(data_info["fingerprint"]),
                "run_folder": str(self.out.resolve()),
            }
            run = self.client.create_run(experiment_id(experiment, self.client), run_name=self.out.name, tags=tags)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat(cfg.to_dict()).items()])
            self.client.log_inputs(self.run_id, [dataset_input(data_info, "training")])
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}) + "\n")
        os.replace(tmp, self.marker)
        self.epoch_log_seconds = 0.0  # time spent logging epochs, inside the training process (benchmark)
        self.monitor = None
        if system_metrics is None:  # on, unless MLflow's own switch is set to false
            system_metrics = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() not in ("false", "0")
        if system_metrics:
            self.monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=SYSTEM_METRICS_SECONDS,
                resume_logging=self.resumed,
                tracking_uri=self.uri,
            )
            self.monitor.start()

    def _continued(self) -> str | None:
        """The run of the checkpoint being resumed, when it was tracked in this same store and still exists."""
        try:
            known = json.loads(self.marker.read_text())
            if known.get("tracking_uri") != self.uri:
                return None
            if self.client.get_run(known["run_id"]).info.lifecycle_stage != "active":
                return None
        except (OSError, ValueError, KeyError, MlflowException):
            return None
        self.client.update_run(known["run_id"], status="RUNNING")
        return known["run_id"]

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        t0 = time.perf_counter()
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, epoch) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.epoch_log_seconds += time.perf_counter() - t0

    def finish(self, result, files: list[Path] = ()) -> None:
        """The outcome of a fit(): the best epoch, early stopping, the history and figures as artifacts."""
        tags = {
            "best_epoch": str(result.best_epoch),
            "stopped_early": str(result.stopped_early).lower(),
            "epochs_trained": str(len(result.history)),
        }
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for f in files:
            if Path(f).is_dir():
                self.client.log_artifacts(self.run_id, str(f), Path(f).name)
            elif Path(f).is_file():
                self.client.log_artifact(self.run_id, str(f))

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        status = "FINISHED"
        if kind is not None:
            status = "KILLED" if issubclass(kind, (KeyboardInterrupt, SystemExit)) else "FAILED"
            self.client.set_tag(self.run_id, "error", f"{kind.__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, status)
