"""The sign-off's steps under an MLflow login (flows/signoff.py): who answers, the answer written on the
version with the reviewer's own credentials, and the night's check of it (vae/tracking/sign_off.py)."""

from __future__ import annotations

from typing import Any

from vae.night.params import PipelineParams
from vae.records import Approval
from vae.tracking import sign_off
from vae.tracking.store import tracking_uri


def reviewer_login() -> str | None:
    """Who this process is logged in to MLflow as (checked by the server), or None where there is no login."""
    return sign_off.current_user(tracking_uri()) if sign_off.logged_in() else None


def sign(name: str, version: str, answer: dict[str, Any]) -> None:
    """The reviewer's answer, written on the version with the reviewer's own login (needs EDIT on the model)."""
    sign_off.sign(tracking_uri(), name, version, answer)


def sign_off_refusal(p: PipelineParams, name: str, version: str, flow_run: str, answer: Approval) -> str | None:
    """Why the night must not take a paused run's answer, or None: with a login, the version's sign_off tag
    must say the same (decision, reviewer, this flow run); without one (a local store) nothing is checked."""
    if not sign_off.logged_in():
        return None
    uri = p.resolved_tracking_uri()
    return sign_off.refusal(uri, name, version, flow_run, answer["decision"], answer["reviewer"])


def await_sign_off(p: PipelineParams, name: str, version: str, flow_run: str, until: float) -> None:
    """Mark the version as waiting for a sign-off in the suspended night `flow_run` (later nights leave it alone)."""
    sign_off.mark_awaiting(p.resolved_tracking_uri(), name, version, flow_run, until)


def sign_off_over(p: PipelineParams, name: str, version: str) -> None:
    """The wait is over (answered, or expired): the version is an undecided one, or a decided one, again."""
    sign_off.clear_awaiting(p.resolved_tracking_uri(), name, version)
