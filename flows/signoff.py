"""Answer a vae-pipeline run that waits for a sign-off (`--require-approval`), from a shell: the same form the
Prefect UI shows on the paused run, through the Prefect client API.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff list
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff approve --reviewer ada --comment "clear gain"
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff reject --reviewer ada --comment "blurry"

With one paused run, that run is answered; with several, name one with --flow-run ID (see `list`).
"""

from __future__ import annotations

import argparse
import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL


def paused_runs() -> list:
    """The vae-pipeline flow runs paused on the server, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["vae-pipeline"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    return sorted(runs, key=lambda r: r.start_time or r.created)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description="Answer a vae-pipeline run paused for sign-off.")
    a.add_argument("action", choices=["list", "approve", "reject"])
    a.add_argument("--reviewer", help="who answers (recorded on the version); required to approve or reject")
    a.add_argument("--comment", default="", help="why (recorded on the version)")
    a.add_argument("--flow-run", help="the paused run's id, when several are paused")
    args = a.parse_args(argv)
    if not PREFECT_API_URL.value():
        print("flows.signoff: error: set PREFECT_API_URL to the Prefect server's API", file=sys.stderr)
        return 2
    runs = paused_runs()
    if args.action == "list":
        for r in runs:
            print(f"{r.id}  {r.name}  paused since {r.state.timestamp:%Y-%m-%d %H:%M:%S}")
        return 0
    if not args.reviewer:
        print(f"flows.signoff: error: {args.action} needs --reviewer NAME", file=sys.stderr)
        return 2
    chosen = [r for r in runs if args.flow_run in (None, str(r.id))]
    if len(chosen) != 1:
        found = ", ".join(str(r.id) for r in runs) or "none"
        print(f"flows.signoff: error: expected one paused run, found {found}: use --flow-run ID", file=sys.stderr)
        return 2
    answer = {"decision": args.action, "reviewer": args.reviewer, "comment": args.comment}
    resume_flow_run(chosen[0].id, run_input=answer)
    print(f"{args.action}: flow run {chosen[0].name} ({chosen[0].id}) resumed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
