"""The pipeline's MLflow records: the candidate's evaluation and registered version, the promotion decision on
its run, and a re-evaluation of the champion on new data."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from vae.checkpoint import load_model
from vae.data import load
from vae.errors import ConfigError
from vae.figures import write_figures
from vae.io import utc_stamp
from vae.tracking import registry, sign_off
from vae.tracking.models import resolve_model
from vae.tracking.night_runs import log_evaluation
from vae.tracking.store import configure, open_client, tag_value, using_store


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def register_candidate(
    uri: str | None,
    name: str,
    trained: Mapping[str, Any],
    metrics: Mapping[str, Any],
    night_id: str,
    run_tags: Mapping[str, str],
    version_tags: Mapping[str, str],
) -> dict[str, Any]:
    """A candidate in its night's run tree: the evaluation run (test metrics linked to the training run's
    logged model), `run_tags` on the training run, then a new version of registered model `name` from that
    logged model, whose run is the training run, with the alias `challenger`."""
    uri = configure(uri)
    evaluation = log_evaluation(uri, night_id, trained, metrics, metrics.get("figures", {}))
    run_id = trained["mlflow_run_id"]
    open_client(uri).log_batch(run_id, tags=[RunTag(k, tag_value(v)) for k, v in run_tags.items()])
    # using_store: a SQLite registry looks the logged model up through mlflow's global tracking URI
    with using_store(uri):
        version = registry.register(
            uri,
            name,
            trained["model_uri"],
            run_id,
            dict(metrics),
            model_id=trained["model_id"],
            version_tags={**version_tags, "night_run_id": night_id, "evaluation_run_id": evaluation},
        )
    return {
        "run_id": run_id,
        "model_uri": trained["model_uri"],
        "model_id": trained["model_id"],
        "version": version,
        "name": name,
        "tracking_uri": uri,
        "evaluation_run_id": evaluation,
        "night_run_id": night_id,
    }


def complete_trial_run(uri: str, run_id: str, checkpoint: Path) -> dict[str, Any]:
    """The winning trial's run made a candidate's training run: its history.json and validation figures as
    artifacts (what a tracked `vae train` logs) and the tag vae.candidate. Returns the trial's summary (its
    history.json without the per-epoch rows) and the figures."""
    folder = checkpoint.parent
    summary = json.loads((folder / "history.json").read_text())
    model, cfg, _ = load_model(checkpoint)
    figures = write_figures(model, load(cfg.data).val, folder / "figures", history=summary["history"])
    client = open_client(uri)
    client.log_artifact(run_id, str(folder / "history.json"))
    client.log_artifacts(run_id, str(folder / "figures"), "figures")
    tags = {
        "vae.candidate": "true",
        "best_epoch": str(summary["best_epoch"]),
        "epochs_trained": str(len(summary["history"])),
        "stopped_early": str(summary["stopped_early"]).lower(),
    }
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return {**{k: v for k, v in summary.items() if k != "history"}, "figures": figures}


def find_candidate(uri: str | None, name: str, key: str) -> str | None:
    """The version registered from the training run folder `key` (config + data), if there is one."""
    return registry.find_version(configure(uri), name, "candidate_key", key)


def awaiting(uri: str | None, name: str, version: str) -> str | None:
    """The suspended night (flow run id) whose sign-off `version` waits for, while that wait lasts, else None."""
    return sign_off.awaited(open_client(configure(uri)).get_model_version(name, version).tags, time.time())


def undecided(uri: str | None, name: str, version: str) -> dict[str, Any] | None:
    """The registered record of `version` when no promotion decision was finished on it (a night that died, or
    whose tracking server stopped answering, between registering it and deciding), else None. Such a version
    is judged by the night that finds it; it is the newest candidate, so it gets `challenger` back too."""
    client = open_client(configure(uri))
    mv = client.get_model_version(name, version)
    if mv.tags.get(registry.DECISION):
        return None
    if registry.alias_version(client, name, registry.CHALLENGER) is None:
        client.set_registered_model_alias(name, registry.CHALLENGER, str(version))
    return {
        "run_id": mv.run_id,
        "model_uri": mv.source,
        "version": str(version),
        "name": name,
        "tracking_uri": configure(uri),
        **{k: mv.tags[k] for k in ("evaluation_run_id", "night_run_id") if k in mv.tags},
    }


def supersede(uri: str | None, name: str, newest: str) -> list[str]:
    """Versions left undecided by a night that ended before judging them, when a later night registers another
    candidate (`newest`: other code or data) instead of judging them: each gets the decision "superseded",
    with the reason, so no version stays without one. A version whose night is still running (another night,
    now), or waits for a sign-off in a suspended night, is left to it. Returns the versions marked."""
    client = open_client(configure(uri))
    marked = []
    for mv in client.search_model_versions(f"name='{name}'"):
        night = mv.tags.get("night_run_id")
        if str(mv.version) == str(newest) or mv.tags.get(registry.DECISION) or not night:
            continue
        if sign_off.awaited(mv.tags, time.time()):
            continue  # a suspended night waits for its sign-off: that night decides it
        try:
            if client.get_run(night).info.status == "RUNNING":
                continue
        except MlflowException:
            pass  # the night's run is gone (deleted by hand): nobody will judge the version
        reason = f"superseded by v{newest}: its night ended before judging it, and the next one made another candidate"
        client.set_model_version_tag(name, mv.version, "promotion.reason", reason)
        client.set_model_version_tag(name, mv.version, "promotion.time", utc_stamp())
        client.set_model_version_tag(name, mv.version, registry.DECISION, "superseded")
        marked.append(str(mv.version))
    return marked


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


def require_champion(uri: str, name: str) -> ModelVersion:
    mv = champion(uri, name)
    if mv is None:
        raise ConfigError(f"model {name!r} has no champion in {uri}: run the pipeline first")
    return mv


def read_history(run_folder: str | Path) -> list[dict[str, float]]:
    return json.loads((Path(run_folder) / "history.json").read_text())["history"]
