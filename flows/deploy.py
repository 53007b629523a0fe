"""Deployments with cron schedules, served by one long-lived process against a running `prefect server`.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--cron "0 2 * * *"] [--trials N]
        [--param NAME=JSON ...]

registers `vae-pipeline/nightly` (retrain, tune, register, promote) and `vae-reevaluate-champion/weekly`
(score the champion on today's data), then waits for the server's scheduler to hand it runs. Stop it with
SIGTERM (Prefect pauses the deployments). Cron schedules need a real server: the temporary one that
Prefect starts for a plain flow call refuses them.

For a team, `--work-pool NAME` registers the same deployments for a process work pool instead, from this
checkout (flow.from_source), and returns: `prefect worker start --pool NAME` processes, on this machine or
others, run them (`make services` starts one). The worker's environment (MLFLOW_TRACKING_URI,
VAE_OPTUNA_STORAGE, PGPASSFILE) says where runs and studies go, so no credential is a parameter.

Guardrail: at most one run of `vae-pipeline/nightly` at a time (deployment concurrency limit 1). A run that
would overlap the running one is cancelled by the server, its state saying "Deployment concurrency limit
reached." (`--on-overlap enqueue` makes it wait for the slot instead, in state AwaitingConcurrencySlot).

A machine that dies mid-night (power, OOM killer, `kill -9` of the worker) leaves its run Running and its
slot held. Runs beat every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set here and by `make services` for
the worker), and both routes create the automation `vae: crash unresponsive runs`, which marks a run that
missed 3 beats Crashed: that frees the slot for the next night, instead of the server's 5-minute lease.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.automations import Automation
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.schedules import Cron

from flows.pipeline import vae_pipeline
from flows.reevaluate import reevaluate_champion
from vae.errors import ConfigError
from vae.night.params import PipelineParams


def deployments(cron: str, reeval_cron: str, timezone: str, parameters: dict, on_overlap: str = "cancel"):
    strategy = ConcurrencyLimitStrategy.CANCEL_NEW if on_overlap == "cancel" else ConcurrencyLimitStrategy.ENQUEUE
    nightly = vae_pipeline.to_deployment(
        name="nightly",
        schedule=Cron(cron, timezone=timezone),
        parameters=parameters,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=strategy),
        description="Retrain, tune, evaluate, register and promote.",
        tags=["vae", "nightly"],
    )
    weekly = reevaluate_champion.to_deployment(
        name="weekly",
        schedule=Cron(reeval_cron, timezone=timezone),
        parameters={
            k: v for k, v in parameters.items() if k in ("dataset", "tracking_uri", "model_name", "min_improvement")
        },
        description="Score the champion on today's test split; an event if it drifted from its record.",
        tags=["vae"],
    )
    return nightly, weekly


HEARTBEAT_SECONDS = 30  # Prefect's minimum
UNRESPONSIVE = "vae: crash unresponsive runs"


def crash_unresponsive_runs(missed: int = 3, tries: int = 5) -> str | None:
    """The server-side automation that marks a flow run Crashed once it has sent no heartbeat, and reached
    no final state, for `missed` heartbeats; created once, updated when it exists. Returns its id, or None
    after `tries` failed attempts (a server that has just started can refuse writes for a moment): the
    deployments are still served, and the warning says what is missing."""
    done = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    automation = Automation(
        name=UNRESPONSIVE,
        description="A run whose process died (its machine, the OOM killer, kill -9) is marked Crashed, "
        "which frees its deployment's concurrency slot.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *done},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed * HEARTBEAT_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {missed * HEARTBEAT_SECONDS} s: the process running it died",
            )
        ],
    )
    for attempt in range(tries):
        try:
            try:
                automation.id = Automation.read(name=UNRESPONSIVE).id
            except ValueError:  # not there yet
                return str(automation.create().id)
            automation.update()
            return str(automation.id)
        except Exception as e:  # the API's errors (HTTP, database busy): try again, then go on without it
            error = e
            time.sleep(2 * (attempt + 1))
    print(
        f"flows.deploy: warning: could not create the automation {UNRESPONSIVE!r} ({type(error).__name__}: "
        f"{error}); a run whose process dies stays Running until the server's lease expires",
        file=sys.stderr,
    )
    return None


def deploy_to_pool(pool: str, cron: str, reeval_cron: str, timezone: str, parameters: dict, on_overlap: str) -> dict:
    """The two deployments on a work pool, their code read from this checkout by the worker; returns their ids."""
    root = str(Path(__file__).resolve().parents[1])
    ids = {}
    entries = ("flows/pipeline.py:vae_pipeline", "flows/reevaluate.py:reevaluate_champion")
    for deployment, entry in zip(deployments(cron, reeval_cron, timezone, parameters, on_overlap), entries):
        flow = vae_pipeline.from_source(source=root, entrypoint=entry)
        ids[f"{deployment.flow_name}/{deployment.name}"] = str(
            flow.deploy(
                name=deployment.name,
                work_pool_name=pool,
                schedule=deployment.schedules[0].schedule,
                parameters=deployment.parameters,
                concurrency_limit=deployment.concurrency_limit,
                description=deployment.description,
                tags=deployment.tags,
                print_next_steps=False,
            )
        )
    return ids


def parse_params(items: list[str]) -> dict:
    """--param NAME=JSON items as the flow's parameters; an unknown name or a value that is not JSON is refused."""
    known = {f.name for f in fields(PipelineParams)}
    params = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.replace("-", "_")
        if name not in known:
            raise ConfigError(
                f"--param {name}: no such parameter of vae-pipeline; expected one of {', '.join(sorted(known))}"
            )
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                f"--param {item!r}: the value is not JSON (a string needs quotes: {name}='\"text\"')"
            ) from None
    return params


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--cron", default="0 2 * * *", help="nightly retrain (default 02:00)")
    a.add_argument("--reeval-cron", default="0 4 * * 0", help="champion re-evaluation (default Sundays 04:00)")
    a.add_argument("--timezone", default="UTC")
    d = PipelineParams()  # the flow's own defaults: a deployment passes only what it changes
    a.add_argument("--dataset", help=f"default {d.dataset}")
    a.add_argument("--trials", type=int, help=f"default {d.trials}")
    a.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    a.add_argument("--nproc", type=int, help=f"default {d.nproc}")
    a.add_argument("--tracking-uri")
    a.add_argument("--work-pool", help="register the deployments for this process work pool and return (no serve)")
    a.add_argument(
        "--on-overlap",
        choices=("cancel", "enqueue"),
        default="cancel",
        help="a nightly run that would overlap the running one: cancelled (default) or queued",
    )
    a.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="any other parameter of vae-pipeline, e.g. --param subset=300 --param workdir='\"w\"'",
    )
    args = a.parse_args(argv)
    named = ("dataset", "trials", "epochs", "nproc", "tracking_uri")
    params = {k: getattr(args, k) for k in named if getattr(args, k) is not None}
    try:
        params.update(parse_params(args.param))
        PipelineParams(**params)  # bad parameters fail here, before anything is registered
    except (ValueError, TypeError, ConfigError) as e:
        print(f"flows.deploy: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))  # the served runs' beat
    crash_unresponsive_runs()
    if args.work_pool:
        ids = deploy_to_pool(args.work_pool, args.cron, args.reeval_cron, args.timezone, params, args.on_overlap)
        print(json.dumps({"work_pool": args.work_pool, "deployments": ids}))
        return 0
    serve(*deployments(args.cron, args.reeval_cron, args.timezone, params, args.on_overlap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
