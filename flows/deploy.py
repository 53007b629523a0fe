"""Deployments with cron schedules, served by one long-lived process against a running `prefect server`.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy [--cron "0 2 * * *"] [--trials 8]

registers `vae-pipeline/nightly` (retrain, tune, register, promote) and `vae-reevaluate-champion/weekly`
(score the champion on today's data), then waits for the server's scheduler to hand it runs. Stop it with
SIGTERM (Prefect pauses the deployments). Cron schedules need a real server: the temporary one that
Prefect starts for a plain flow call refuses them. For a team, `prefect work-pool create` + workers run the
same flows without code changes (see README, "Scaling out").

Guardrail: at most one run of `vae-pipeline/nightly` at a time (deployment concurrency limit 1). A run that
would overlap the running one is cancelled by the server, its state saying "Deployment concurrency limit
reached." (`--on-overlap enqueue` makes it wait for the slot instead, in state AwaitingConcurrencySlot).
"""

from __future__ import annotations

import argparse
import json
import sys

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.pipeline import reevaluate_champion, vae_pipeline


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
        parameters={k: v for k, v in parameters.items() if k in ("dataset", "tracking_uri", "model_name")},
        description="Score the champion on today's test split.",
        tags=["vae"],
    )
    return nightly, weekly


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--cron", default="0 2 * * *", help="nightly retrain (default 02:00)")
    a.add_argument("--reeval-cron", default="0 4 * * 0", help="champion re-evaluation (default Sundays 04:00)")
    a.add_argument("--timezone", default="UTC")
    a.add_argument("--dataset", default="mnist-5k")
    a.add_argument("--trials", type=int, default=8)
    a.add_argument("--epochs", type=int, default=10)
    a.add_argument("--nproc", type=int, default=1)
    a.add_argument("--tracking-uri")
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
    params = {"dataset": args.dataset, "trials": args.trials, "epochs": args.epochs, "nproc": args.nproc}
    if args.tracking_uri:
        params["tracking_uri"] = args.tracking_uri
    for item in args.param:
        name, _, value = item.partition("=")
        params[name.replace("-", "_")] = json.loads(value)
    serve(*deployments(args.cron, args.reeval_cron, args.timezone, params, args.on_overlap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
