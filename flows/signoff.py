"""The sign-off (`--require-approval`): the night pauses after the gate (sign_off), and a reviewer answers the
paused run's form, in the Prefect UI or from a shell with this module (the same form, through the client API).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff list
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff approve --reviewer ada --comment "clear gain"
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff reject --reviewer ada --comment "blurry"

With one paused run, that run is answered; with several, name one with --flow-run ID (see `list`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.settings import PREFECT_API_URL

from vae.errors import ConfigError, VAEError
from vae.night import steps
from vae.night.params import PipelineParams
from vae.records import Approval, Gated, Registered


class SignOff(RunInput):
    """The form of a paused run: the reviewer's answer on moving `champion` to the new version."""

    decision: Literal["approve", "reject"]
    reviewer: str
    comment: str = ""


def need_server(p: PipelineParams) -> None:
    """A sign-off needs a server someone else can reach to answer; the temporary one dies with the run."""
    if p.require_approval and not PREFECT_API_URL.value():
        raise ConfigError(
            "require_approval needs a Prefect server that outlives this run, to answer the paused run's form: "
            "start one (`prefect server start`) and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )


class SignOffTimeout(VAEError):
    """Nobody answered the paused run within approval_timeout: a run that started and failed."""

    exit_code = 1


def sign_off(p: PipelineParams, registered: Registered, gated: Gated, log: Callable[[str], None]) -> Approval:
    """Pause until a reviewer answers; FlowPauseTimeout after approval_timeout (the champion stays)."""
    d = gated["decision"]
    log(
        f"{registered['name']} v{registered['version']} passes the gate ({d['reason']}). Waiting for a sign-off: "
        f"read comparison/comparison.md on MLflow run {registered['run_id']}, then answer this paused run's form "
        f"in the Prefect UI (approve or reject, with a comment)"
    )
    name, version = registered["name"], registered["version"]
    try:
        answer = pause_flow_run(
            wait_for_input=SignOff, timeout=p.approval_timeout, poll_interval=2, key=f"sign-off-v{version}"
        )
    except FlowPauseTimeout:
        raise SignOffTimeout(
            f"no sign-off for {name} v{version} within approval_timeout={p.approval_timeout} s: the champion "
            f"stays, v{version} stays challenger with no decision; if it should win, promote it by hand: "
            f"vae registry promote --name {name} --version {version}"
        ) from None
    log(f"sign-off: {answer.decision} by {answer.reviewer}: {answer.comment or '(no comment)'}")
    return steps.approval(answer.decision, answer.reviewer, answer.comment)


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
