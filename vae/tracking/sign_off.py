"""A sign-off held by MLflow's login: the reviewer's answer is written, with the reviewer's own credentials, as
the tag `sign_off` on the version it is about, and the paused night accepts an answer only when that tag
says the same. MLflow's basic-auth app lets only a user with EDIT on the registered model write it, and
`users/current` names who is logged in, so the reviewer recorded is the login, not a name typed into a form
that anyone holding Prefect's one shared credential could fill in (vae/credentials.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow.exceptions import MlflowException

from vae.credentials import call
from vae.errors import ConfigError
from vae.tracking.store import open_client

TAG = "sign_off"


def logged_in() -> bool:
    """Whether this process talks to MLflow under a login (MLFLOW_TRACKING_USERNAME, as services sets)."""
    return bool(os.environ.get("MLFLOW_TRACKING_USERNAME"))


def current_user(uri: str) -> str:
    """The user the MLflow server says this process is logged in as; ConfigError when it refuses the login."""
    user = os.environ["MLFLOW_TRACKING_USERNAME"]
    try:
        status, answer = call(
            uri, "/api/2.0/mlflow/users/current", None, (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        )
    except OSError as e:
        raise ConfigError(f"MLflow at {uri} did not say who is logged in: {e}") from None
    if status != 200:
        raise ConfigError(
            f"MLflow at {uri} refused the login of {user!r} ({status}): read your login first "
            f"(set -a; . .services/users/NAME.env; set +a)"
        )
    try:
        return answer["user"]["username"]
    except (KeyError, TypeError):
        raise ConfigError(f"MLflow at {uri} did not say who is logged in: {answer}") from None


def sign(uri: str, name: str, version: str, answer: dict[str, Any]) -> None:
    """Write the answer on the version as the logged-in reviewer; ConfigError when MLflow refuses (no EDIT)."""
    try:
        open_client(uri).set_model_version_tag(name, version, TAG, json.dumps(answer, sort_keys=True))
    except MlflowException as e:
        if e.error_code == "PERMISSION_DENIED" or "403" in str(e) or "Permission denied" in str(e):
            raise ConfigError(
                f"{answer['reviewer']!r} may not sign off on {name}: an admin grants it with "
                f"`python -m vae.services user {answer['reviewer']} --grant {name}`"
            ) from None
        raise


def refusal(uri: str, name: str, version: str, flow_run: str, decision: str, reviewer: str) -> str | None:
    """Why the night must not take this answer (the version's sign_off tag does not say it), or None."""
    tag = open_client(uri).get_model_version(name, version).tags.get(TAG)
    try:
        said = json.loads(tag) if tag else None
    except ValueError:
        said = None
    if not isinstance(said, dict):
        return (
            f"no sign_off tag on {name} v{version}: answer with `python -m flows.signoff`, logged in to MLflow "
            f"as a user granted EDIT on {name}"
        )
    wanted = {"decision": decision, "reviewer": reviewer, "flow_run": flow_run}
    differs = sorted(k for k, v in wanted.items() if said.get(k) != v)
    if differs:
        return f"the sign_off tag on {name} v{version} differs from the answer in {', '.join(differs)}"
    return None


AWAITING = "sign_off.awaiting"  # {"flow_run", "until"} on a version a suspended night waits on


def mark_awaiting(uri: str, name: str, version: str, flow_run: str, until: float) -> None:
    """The version waits for a sign-off in a suspended night until `until` (epoch seconds): later nights leave
    it alone (neither judge it again nor supersede it) until that night decides it or its wait expires."""
    value = json.dumps({"flow_run": flow_run, "until": round(until, 3)}, sort_keys=True)
    open_client(uri).set_model_version_tag(name, version, AWAITING, value)


def clear_awaiting(uri: str, name: str, version: str) -> None:
    client = open_client(uri)
    if AWAITING in client.get_model_version(name, version).tags:
        client.delete_model_version_tag(name, version, AWAITING)


def awaited(tags: dict[str, str], now: float) -> str | None:
    """The flow run a version's sign-off is awaited in, while its wait has not expired; else None."""
    try:
        said = json.loads(tags.get(AWAITING) or "null")
    except ValueError:
        return None
    if isinstance(said, dict) and isinstance(said.get("until"), (int, float)) and said["until"] > now:
        return str(said.get("flow_run"))
    return None
