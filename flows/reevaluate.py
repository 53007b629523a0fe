"""The weekly `vae-reevaluate-champion` flow: the champion scored again on today's test split and compared
with its own record (vae/tracking/drift.py); a drift beyond the gate's interval raises the Prefect event
vae.champion.drifted, which flows/notify.py's automation tells someone about. Deployed beside the nightly
flow by flows/deploy.py (weekly cron)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from flows.pipeline import fetch_data
from vae.night import steps
from vae.night.params import PipelineParams


def _log(line: str) -> None:
    get_run_logger().info(line)


DRIFTED = "vae.champion.drifted"  # the event of a re-evaluation that finds the champion off its record


@flow(name="vae-reevaluate-champion", log_prints=True)
def reevaluate_champion(
    dataset: str = "mnist-5k",
    tracking_uri: str | None = None,
    model_name: str | None = None,
    iw_samples: int = 100,
    min_improvement: float = 0.5,
) -> dict:
    """Score the current champion on today's test split, compare it with its record (drifted: beyond the
    gate's interval and min_improvement: the event vae.champion.drifted), log both to its MLflow run."""
    p = PipelineParams(
        dataset=dataset,
        tracking_uri=tracking_uri,
        model_name=model_name,
        iw_samples=iw_samples,
        min_improvement=min_improvement,
    )
    fetch_data(p)
    result = steps.reevaluate_champion(p, log=_log)
    if result["drift"]["drifted"]:  # for an automation to tell someone (Prefect events)
        resource = {"prefect.resource.id": f"vae.model.{result['name']}", "prefect.resource.name": result["name"]}
        emit_event(DRIFTED, resource=resource, payload={"version": result["version"], **result["drift"]})
    return result
