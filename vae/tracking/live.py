"""A training run in MLflow as it happens: `vae train --tracking-uri/--experiment`, the pipeline's training of
the best configuration, and every tuning trial go through this one class.

Params and the data set (a dataset input whose digest is the project's fingerprint) at the start, each
epoch's metrics as the epoch ends (the run is a fit() callback: the training loop itself knows nothing of
MLflow), CPU/memory (and GPU) system metrics beside them (off for tuning trials: a few seconds each, and
dozens of them), the history, figures and model at the end, and the run's status: FINISHED, FAILED on an
error, KILLED on Ctrl-C or SIGTERM. Rank 0 only, so a DDP job is one run. A run may hang under a parent run
(`mlflow.parentRunId`: a pipeline's night, a study). A resumed training run continues its MLflow run: the
run id is kept in OUT/mlflow_run.json; resumed under another parent (the next night), it moves there.
Epoch metrics go through an outbox (vae/tracking/outbox.py): a tracking server that stops answering for
minutes does not stop the training, and gets the metrics when it is back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from vae import checkpoint as ckpt
from vae.config import Config
from vae.tracking.epoch_images import EpochImages, every_from_env
from vae.tracking.models import log_model
from vae.tracking.outbox import Outbox, outage_seconds
from vae.tracking.runs import PARENT_TAG, dataset_input, flat, source_tags
from vae.tracking.store import configure, experiment_id, open_client, param_value, tag_value, using_store

MARKER = "mlflow_run.json"
SYSTEM_METRICS_SECONDS = 5.0


class TrainingRun:
    """Use as a context manager around fit(), passing the object itself as a callback; or call end() yourself
    (a tuning trial ends with its own state). `tags` and `extra_params` add to the run's own."""

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        cfg: Config,
        out: Path,
        data_info: Mapping[str, Any],
        resume: bool = False,
        system_metrics: bool | None = None,
        parent_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        extra_params: Mapping[str, Any] | None = None,
        client: MlflowClient | None = None,
        images_every: int | None = None,
    ) -> None:
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
        self.uri = configure(uri)
        self.client = client or open_client(self.uri)
        self.out, self.marker = Path(out), Path(out) / MARKER
        self.run_id = self._continued(parent_id) if resume else None
        self.resumed = self.run_id is not None
        if self.run_id is None:
            all_tags = {
                **source_tags(),
                "vae.step": "train",
                "dataset": str(data_info["dataset"]),
                "fingerprint": str(data_info["fingerprint"]),
                "run_folder": str(self.out.resolve()),
                **{k: tag_value(v) for k, v in (tags or {}).items()},
            }
            if parent_id:
                all_tags[PARENT_TAG] = parent_id
            exp = experiment_id(experiment, self.client)
            self.run_id = self.client.create_run(exp, run_name=run_name or self.out.name, tags=all_tags).info.run_id
            params = {**flat(cfg.to_dict()), **(extra_params or {})}
            self.client.log_batch(self.run_id, params=[Param(k, param_value(v)) for k, v in params.items()])
            self.client.log_inputs(self.run_id, [dataset_input(data_info, "training")])
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}) + "\n")
        os.replace(tmp, self.marker)
        self.epoch_log_seconds = 0.0  # time spent logging epochs, inside the training process (benchmark)
        self.outbox = Outbox(self.client, self.run_id, self.out)  # with what an earlier process left undelivered
        every = every_from_env() if images_every is None else images_every
        self.images = EpochImages(self.client, self.run_id, self.out / ckpt.FILENAME, cfg, every)
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

    def _continued(self, parent_id: str | None) -> str | None:
        """The run of the checkpoint being resumed, when it was tracked in this same store and still exists."""
        try:
            known = json.loads(self.marker.read_text())
            if known.get("tracking_uri") != self.uri:
                return None
            run = self.client.get_run(known["run_id"])
            if run.info.lifecycle_stage != "active":
                return None
        except (OSError, ValueError, KeyError, MlflowException):
            return None
        self.client.update_run(known["run_id"], status="RUNNING")
        adopt(self.client, known["run_id"], parent_id)
        return known["run_id"]

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        t0 = time.perf_counter()
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, epoch) for k, v in row.items() if k != "epoch"]
        self.outbox.put(metrics)  # delivered by the outbox's thread: an outage does not stop the training
        self.images(epoch)  # every N epochs: the sample and reconstruction grids, with the epoch as their step
        self.epoch_log_seconds += time.perf_counter() - t0

    def finish(self, result, files: list[Path] = (), model: Path | None = None):
        """The outcome of a fit(): the best epoch, early stopping, the history and figures as artifacts, and
        `model` (the best epoch's checkpoint) as the run's logged model; returns its ModelInfo (or None)."""
        self.outbox.flush(outage_seconds())  # the server answers again before the calls below, or they fail
        self.images.wait(60.0)
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
        return self.log_model(model) if model is not None else None

    def log_model(self, checkpoint: Path):
        """`checkpoint` as the pyfunc model of this run (MLflow 3: a logged model whose source run is this one)."""
        with using_store(self.uri), mlflow.start_run(run_id=self.run_id):
            info = log_model(checkpoint, name="model")
        self.client.update_run(self.run_id, status="RUNNING")  # start_run's exit ended it: end() says how
        self.client.log_batch(self.run_id, tags=[RunTag("model_id", info.model_id)])
        return info

    def end(self, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
        # a killed run does not wait out an outage: what is left stays in the spool for its --resume
        self.outbox.close(outage_seconds() if status == "FINISHED" else 5.0)
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, tag_value(v)) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:
            self.end("FINISHED")
            return
        status = "KILLED" if issubclass(kind, (KeyboardInterrupt, SystemExit)) else "FAILED"
        self.end(status, {"error": f"{kind.__name__}: {error}"})


def adopt(client: MlflowClient, run_id: str, parent_id: str | None) -> None:
    """Hang an existing run under `parent_id` (a training resumed, or reused, by a later night), noting the
    parent it leaves in `vae.earlier_parent_run_id`."""
    if not parent_id:
        return
    old = client.get_run(run_id).data.tags.get(PARENT_TAG)
    if old != parent_id:
        client.set_tag(run_id, PARENT_TAG, parent_id)
        if old:
            client.set_tag(run_id, "vae.earlier_parent_run_id", old)
