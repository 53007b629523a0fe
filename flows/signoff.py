"""The sign-off (`--require-approval`): the night waits after the gate (sign_off), and a reviewer answers the
waiting run's form, in the Prefect UI or from a shell with this module (the same form, through the client API).

A deployed night (served, or on a worker) is *suspended*: it leaves a record of its work in the work folder
(sign-off/<flow run id>.json, 0600), marks the version as awaited, and its process ends, which frees the night
lock and the deployment's slot, so the next scheduled night runs meanwhile and leaves that version alone. The
answer reschedules the run: it starts again, finds its record, and only decides (the gate's decision and the
answer are applied, `champion` moves or not), without the night's work. A run the deployment's concurrency
limit cancelled on its resume (a night was running; `--on-overlap cancel`) is rescheduled when that night ends
(tend). A night run from a shell (`python -m flows.pipeline`) has no deployment to be rescheduled by, and
pauses: its process, lock and slot wait with it.
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
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Scheduled

from flows import nights
from vae.errors import ConfigError, VAEError
from vae.night import review, steps
from vae.night.params import PipelineParams
from vae.records import Approval


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


def sign_off(p: PipelineParams, night: dict, log: Callable[[str], None]) -> Approval:
    """Wait until a reviewer answers on night["registered"] (suspended when deployed, else paused); SignOffTimeout
    after approval_timeout (the champion stays). With an MLflow login, an answer the version's sign_off tag does
    not confirm is refused and the run waits again. `night`: what the night did, parked for a resumed run."""
    registered, d = night["registered"], night["gated"]["decision"]
    name, version, run_id = registered["name"], registered["version"], str(flow_run.get_id())
    suspend = deployment.get_id() is not None
    until, attempt = night.get("until") or time.time() + p.approval_timeout, night.get("attempt", 0)
    if "until" not in night:
        log(
            f"{name} v{version} passes the gate ({d['reason']}). Waiting for a sign-off: read "
            f"comparison/comparison.md on MLflow run {registered['run_id']}, then answer with "
            f"`python -m flows.signoff approve|reject` (or this run's form in the Prefect UI)"
        )
    while (left := int(until - time.time())) > 0:
        key = pause_key(name, version, attempt)
        if suspend:  # the record first: the process ends inside suspend_flow_run
            _park(p, {**night, "until": until, "attempt": attempt})
            steps.registered_step(p, night["best"], version)  # the next night searches on, not resumes this one
            review.await_sign_off(p, name, version, run_id, until)
            answer = suspend_flow_run(wait_for_input=SignOff, timeout=left, key=key)
        else:
            try:
                answer = pause_flow_run(wait_for_input=SignOff, timeout=left, poll_interval=2, key=key)
            except FlowPauseTimeout:
                break
        got = steps.approval(answer.decision, answer.reviewer, answer.comment)
        refused = review.sign_off_refusal(p, name, version, run_id, got)
        if refused is None:
            log(f"sign-off: {answer.decision} by {answer.reviewer}: {answer.comment or '(no comment)'}")
            return got
        log(f"sign-off refused ({answer.decision} by {answer.reviewer!r}): {refused}; waiting again")
        attempt += 1
    raise SignOffTimeout(timed_out(p, name, version))


def timed_out(p: PipelineParams, name: str, version: str) -> str:
    return (
        f"no sign-off for {name} v{version} within approval_timeout={p.approval_timeout} s: the champion "
        f"stays, v{version} stays challenger with no decision; if it should win, promote it by hand: "
        f"vae registry promote --name {name} --version {version}"
    )


def _parked_file(p: PipelineParams, run_id: str) -> Path:
    return Path(p.workdir) / "sign-off" / f"{run_id}.json"


def _park(p: PipelineParams, night: dict) -> None:
    """Whole or absent, 0600 (the records name the stores the later steps connect with, passwords included)."""
    path = _parked_file(p, str(flow_run.get_id()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(night, f)
    tmp.replace(path)


def parked(p: PipelineParams) -> dict | None:
    """What this flow run's night did before it was suspended for a sign-off, or None (a night to run)."""
    path = _parked_file(p, str(flow_run.get_id()))
    return json.loads(path.read_text()) if path.is_file() else None


def decided(p: PipelineParams, night: dict) -> None:
    """The suspended night has decided: its record and the version's mark go."""
    review.sign_off_over(p, night["registered"]["name"], night["registered"]["version"])
    _parked_file(p, str(flow_run.get_id())).unlink(missing_ok=True)


def tend(p: PipelineParams, log: Callable[[str], None]) -> None:
    """At a night's end, the suspended nights of its work folder: one answered while a night ran, which the
    deployment's concurrency limit cancelled on its resume, is rescheduled (in REQUEUE_S, once this night has
    freed the slot); one whose wait is over without a decision (expired, cancelled by hand) is recorded failed
    and its version is left undecided, as a timed-out pause leaves it."""
    folder = Path(p.workdir) / "sign-off"
    with get_client(sync_client=True) as client:
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem == str(flow_run.get_id()):
                continue
            try:  # in the night's `finally`: a record it cannot tend must not replace the night's own outcome
                _tend_one(p, path, client, log)
            except Exception as e:
                log(f"could not tend the suspended night {path.name}: {type(e).__name__}: {e}")


def _tend_one(p: PipelineParams, path: Path, client, log: Callable[[str], None]) -> None:
    run, night = client.read_flow_run(path.stem), json.loads(path.read_text())
    state = run.state
    if state is None or not state.is_final():
        return
    if state.is_cancelled() and "concurrency limit" in (state.message or ""):
        when = datetime.now(UTC) + timedelta(seconds=REQUEUE_S)
        client.set_flow_run_state(run.id, Scheduled(scheduled_time=when, message=REQUEUED), force=True)
        log(f"flow run {run.name} was answered while this night ran: rescheduled to decide")
    elif not state.is_completed():
        _expired(PipelineParams(**night["params"]), night, run, client)
        path.unlink()
        log(f"flow run {run.name}'s sign-off ended {state.name} without a decision: recorded")
    else:
        path.unlink()


REQUEUE_S = 20
REQUEUED = "answered while another night held the deployment's slot: rescheduled to decide"


def _expired(p: PipelineParams, night: dict, run, client) -> None:
    name, version = night["registered"]["name"], night["registered"]["version"]
    reason = timed_out(p, name, version) if state_expired(run.state) else f"the sign-off ended {run.state.name}"
    review.sign_off_over(p, name, version)
    nights.failure_artifact(client, run.id, f"# Night failed\n\n{reason}\n")
    extra = {"prefect.flow_run_id": str(run.id)}
    steps.night_record_step(p, {"case": "failed", "reason": reason}, extra, True, run_id=night["night_id"])


def state_expired(state) -> bool:
    """The server failed a wait nobody answered in time (its message, Prefect 3.9)."""
    return state.is_failed() and "never resumed" in (state.message or "")


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
