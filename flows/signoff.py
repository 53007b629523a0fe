"""The sign-off (`--require-approval`): the night pauses after the gate (sign_off), and a reviewer answers the
paused run's form, in the Prefect UI or from a shell with this module (the same form, through the client API).
Against `make services`, read your own login first (`python -m vae.services user NAME --grant MODEL` makes
it): the answer is then written on the version with your MLflow credentials, the night takes it only when
that tag confirms it, and the reviewer recorded is your login, not a name typed in.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff list
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff approve --reviewer ada --comment "clear gain"
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.signoff reject --reviewer ada --comment "blurry"

With one paused run, that run is answered; with several, name one with --flow-run ID (see `list`).
"""

from __future__ import annotations

import argparse
import sys
import time
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
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

from vae.errors import ConfigError, VAEError
from vae.night import review, steps
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
    """Pause until a reviewer answers; FlowPauseTimeout after approval_timeout (the champion stays). With an
    MLflow login, an answer the version's sign_off tag does not confirm is refused and the run pauses again."""
    d = gated["decision"]
    log(
        f"{registered['name']} v{registered['version']} passes the gate ({d['reason']}). Waiting for a sign-off: "
        f"read comparison/comparison.md on MLflow run {registered['run_id']}, then answer with "
        f"`python -m flows.signoff approve|reject` (or this paused run's form in the Prefect UI)"
    )
    name, version = registered["name"], registered["version"]
    deadline, attempt = time.monotonic() + p.approval_timeout, 0
    while (left := int(deadline - time.monotonic())) > 0:
        try:
            key = pause_key(name, version, attempt)
            answer = pause_flow_run(wait_for_input=SignOff, timeout=left, poll_interval=2, key=key)
        except FlowPauseTimeout:
            break
        got = steps.approval(answer.decision, answer.reviewer, answer.comment)
        refused = review.sign_off_refusal(p, name, version, str(flow_run.get_id()), got)
        if refused is None:
            log(f"sign-off: {answer.decision} by {answer.reviewer}: {answer.comment or '(no comment)'}")
            return got
        log(f"sign-off refused ({answer.decision} by {answer.reviewer!r}): {refused}; waiting again")
        attempt += 1
    raise SignOffTimeout(
        f"no sign-off for {name} v{version} within approval_timeout={p.approval_timeout} s: the champion "
        f"stays, v{version} stays challenger with no decision; if it should win, promote it by hand: "
        f"vae registry promote --name {name} --version {version}"
    )


def pause_key(name: str, version: str, attempt: int) -> str:
    """The paused run's key, which the answering shell reads the model and version from (each pause its own;
    Prefect takes only lowercase letters, digits and dashes, so the name is in hex)."""
    return f"sign-off-{attempt}-v{version}-{name.encode().hex()}"


def paused_on(run) -> tuple[str, str] | None:
    """(model name, version) a paused run waits on, from its pause key; None for a pause of another kind."""
    parts = (getattr(run.state.state_details, "pause_key", None) or "").split("-")
    if len(parts) != 5 or parts[:2] != ["sign", "off"] or not parts[3].startswith("v"):
        return None
    try:
        return bytes.fromhex(parts[4]).decode(), parts[3][1:]
    except ValueError:
        return None


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
    a.add_argument("--reviewer", help="who answers (recorded on the version); with an MLflow login, the login")
    a.add_argument("--comment", default="", help="why (recorded on the version)")
    a.add_argument("--flow-run", help="the paused run's id, when several are paused")
    args = a.parse_args(argv)
    if not PREFECT_API_URL.value():
        return _error("set PREFECT_API_URL to the Prefect server's API")
    runs = paused_runs()
    if args.action == "list":
        for r in runs:
            print(f"{r.id}  {r.name}  paused since {r.state.timestamp:%Y-%m-%d %H:%M:%S}")
        return 0
    try:
        login = review.reviewer_login()
    except VAEError as e:
        return _error(str(e))
    if login and args.reviewer not in (None, login):
        return _error(f"logged in to MLflow as {login!r}, so the answer is theirs: drop --reviewer {args.reviewer}")
    reviewer = login or args.reviewer
    if not reviewer:
        return _error(f"{args.action} needs --reviewer NAME (or an MLflow login)")
    chosen = [r for r in runs if args.flow_run in (None, str(r.id))]
    if len(chosen) != 1:
        found = ", ".join(str(r.id) for r in runs) or "none"
        return _error(f"expected one paused run, found {found}: use --flow-run ID")
    answer = {"decision": args.action, "reviewer": reviewer, "comment": args.comment}
    if login:
        if (waits := paused_on(chosen[0])) is None:
            return _error(f"flow run {chosen[0].id} is not paused for a sign-off")
        try:
            review.sign(*waits, {**answer, "flow_run": str(chosen[0].id)})
        except VAEError as e:
            return _error(str(e))
    resume_flow_run(chosen[0].id, run_input=answer)
    print(f"{args.action} by {reviewer}: flow run {chosen[0].name} ({chosen[0].id}) resumed")
    return 0


def _error(text: str) -> int:
    print(f"flows.signoff: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
