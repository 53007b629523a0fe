"""The pipeline's MLflow records: the candidate's run and registered version, the promotion decision on it,
and a re-evaluation of the champion on new data."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion

from vae.errors import ConfigError
from vae.tracking import registry
from vae.tracking.models import log_model, resolve_model
from vae.tracking.runs import dataset_input, flat
from vae.tracking.store import configure, experiment_id, open_client, using_store


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_candidate(
    uri: str | None,
    name: str,
    trained: Mapping[str, Any],
    history: list[dict[str, float]],
    metrics: Mapping[str, Any],
    tags: Mapping[str, str],
    record: Mapping[str, Any],
    version_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One MLflow run for a candidate (params, per-epoch and test metrics, figures, `record` as pipeline.json,
    the pyfunc model), then a new version of registered model `name` with the alias `challenger`."""
    uri = configure(uri)
    with (
        using_store(uri),
        mlflow.start_run(experiment_id=experiment_id(name, open_client(uri)), run_name=f"pipeline-{name}") as run,
    ):
        mlflow.set_tags(dict(tags))
        mlflow.log_params(flat(trained["config"]))
        for row in history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        for path in metrics.get("figures", {}).values():
            mlflow.log_artifact(path, artifact_path="figures")
        mlflow.log_dict(dict(record), "pipeline.json")
        # The best epoch's weights (best.pt) are the model; a result from before best.pt existed has only the last.
        mlflow.set_tag("best_epoch", str(trained.get("best_epoch", "last")))
        info = log_model(trained.get("best_checkpoint") or trained["checkpoint"], name="model")
        # The test metrics on the logged model (MLflow 3's model page lists them) and on the run, with the
        # test split as the run's evaluation dataset input.
        test = dataset_input(
            {
                "dataset": metrics["dataset"],
                "fingerprint": metrics["fingerprint"],
                "source": metrics["dataset"],
                "splits": {"test": {"size": metrics.get("images")}},
            },
            "evaluation",
        )
        open_client(uri).log_inputs(run.info.run_id, [test])
        mlflow.log_metrics({f"test_{k}": v for k, v in _numbers(metrics).items()}, model_id=info.model_id)
        version = registry.register(
            uri,
            name,
            info.model_uri,
            run.info.run_id,
            dict(metrics),
            model_id=info.model_id,
            version_tags=dict(version_tags or {}),
        )
    return {
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "version": version,
        "name": name,
        "tracking_uri": uri,
    }


def log_night(
    uri: str | None, name: str, tags: Mapping[str, str], record: Mapping[str, Any], failed: bool = False
) -> str:
    """A small run in the model's experiment for a night that registered nothing (no new candidate, or a
    night that failed or crashed): its tags (nightly.case, nightly.reason...) and `record` as pipeline.json."""
    uri = configure(uri)
    with using_store(uri):
        run = mlflow.start_run(
            experiment_id=experiment_id(name, open_client(uri)), run_name=f"night-{tags.get('nightly.case')}"
        )
        try:
            mlflow.set_tags(dict(tags))
            mlflow.log_dict(dict(record), "pipeline.json")
        finally:
            mlflow.end_run("FAILED" if failed else "FINISHED")
    return run.info.run_id


def find_candidate(uri: str | None, name: str, key: str) -> str | None:
    """The version registered from the training run folder `key` (config + data), if there is one."""
    return registry.find_version(configure(uri), name, "candidate_key", key)


def champion(uri: str, name: str) -> ModelVersion | None:
    """The version under the `champion` alias, or None."""
    return registry.alias_version(open_client(uri), name, registry.CHAMPION)


def load_champion(uri: str, name: str):
    """(model, cfg) of models:/name@champion, the weights read with torch.load(weights_only=True)."""
    model, cfg, _ = resolve_model(f"models:/{name}@{registry.CHAMPION}", uri)
    return model, cfg


def record_decision(uri: str, run_id: str, decision: Mapping[str, Any]) -> None:
    """The promotion decision on the candidate's run: promotion.json, tags, and the improvement as a metric."""
    with using_store(uri), mlflow.start_run(run_id=run_id):
        mlflow.log_dict(dict(decision), "promotion.json")
        mlflow.set_tags(
            {
                "promotion.decision": "promoted" if decision["promote"] else "rejected",
                "promotion.reason": decision["reason"],
            }
        )
        if decision.get("improvement") is not None:
            mlflow.log_metric("promotion_improvement", decision["improvement"])


def log_reevaluation(uri: str, name: str, version: ModelVersion, metrics: Mapping[str, Any]) -> None:
    """The champion's metrics on today's data: reeval_* metrics on its run, a `reevaluated` tag on its version."""
    with using_store(uri), mlflow.start_run(run_id=version.run_id):
        mlflow.log_metrics({f"reeval_{k}": v for k, v in _numbers(metrics).items()}, step=int(time.time()))
    open_client(uri).set_model_version_tag(
        name,
        str(version.version),
        "reevaluated",
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "neg_elbo": metrics["neg_elbo"],
                "fingerprint": metrics["fingerprint"],
            }
        ),
    )


def require_champion(uri: str, name: str) -> ModelVersion:
    mv = champion(uri, name)
    if mv is None:
        raise ConfigError(f"model {name!r} has no champion in {uri}: run the pipeline first")
    return mv


def read_history(run_folder: str | Path) -> list[dict[str, float]]:
    return json.loads((Path(run_folder) / "history.json").read_text())["history"]
