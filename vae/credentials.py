"""The logins of the shared services (vae/services.py), made at the first start and kept in files of mode
0600 from their first byte; nothing here prints a secret, puts one on a command line or in a URL.

    HOME/credentials.json   MLflow's admin and `pipeline` passwords, Prefect's auth string, Flask's key
    HOME/mlflow-auth.ini    MLflow's basic-auth app: its user database (PostgreSQL), READ for every login
    HOME/client.env         what the pipeline, the worker and `vae` read: URLs plus the `pipeline` login
    HOME/users/NAME.env     a reviewer's own MLflow login (`python -m vae.services user NAME --grant MODEL`)

MLflow checks every request against its users and their permissions: any login reads, the user that created
an experiment or registered model (the pipeline) may change it, and a reviewer may move `champion` and sign
off only on a model they were granted EDIT on. Prefect's open-source server knows one shared credential and
no users: whoever holds it may start flow runs on the worker, which is why a sign-off is checked against the
reviewer's MLflow login (flows/signoff.py) and not taken from Prefect alone. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import urllib.error
import urllib.request
from pathlib import Path

ADMIN, PIPELINE = "admin", "pipeline"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
AUTH = "mlflow.server.auth:authenticate_request_basic_auth"
# MLflow checks a login's password hash (scrypt, ~0.1 s of CPU) on every request unless it may keep a good
# login for a while: with the one worker the server runs, a password change or a deleted user made through
# its API takes effect at once, one made in its database directly within this many seconds.
AUTH_CACHE_S = 60


def private_file(path: Path, text: str) -> None:
    """Write `text` to a new file made 0600 before its first byte (a chmod after the write leaves a moment in
    which another local user can read it); an old file of that name is replaced."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def stored(home: Path) -> dict[str, str]:
    """This home's secrets, generated at the first call and read back after."""
    path = home / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    made = {
        "mlflow_admin": secrets.token_urlsafe(24),
        "mlflow_pipeline": secrets.token_urlsafe(24),
        "prefect": f"vae:{secrets.token_urlsafe(24)}",
        "flask_secret": secrets.token_urlsafe(32),
    }
    private_file(path, json.dumps(made, indent=2) + "\n")
    return made


def mlflow_server_env(home: Path, database_uri: str) -> dict[str, str]:
    """The environment that turns on `mlflow server --app-name basic-auth` (its ini written 0600)."""
    s = stored(home)
    ini = home / "mlflow-auth.ini"
    private_file(
        ini,
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {database_uri}\nadmin_username = {ADMIN}\n"
        f"admin_password = {s['mlflow_admin']}\nauthorization_function = {AUTH}\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n",
    )
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": s["flask_secret"]}


def logins(home: Path) -> dict[str, str]:
    """The pipeline's logins, as a client's environment (added to the URLs by services.client_env)."""
    s = stored(home)
    return {
        "MLFLOW_TRACKING_USERNAME": PIPELINE,
        "MLFLOW_TRACKING_PASSWORD": s["mlflow_pipeline"],
        "PREFECT_API_AUTH_STRING": s["prefect"],
    }


def call(url: str, path: str, body: dict | None, login: tuple[str, str]) -> tuple[int, dict]:
    """(status, JSON answer) of one MLflow REST call made as `login`: a POST of `body`, a GET without one."""
    token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"message": text[:300]}


def ensure_user(url: str, home: Path, name: str, password: str) -> bool:
    """Create MLflow user `name` (as admin); False when it exists already (its password is left as it is)."""
    body, admin = {"username": name, "password": password}, (ADMIN, stored(home)["mlflow_admin"])
    status, answer = call(url, "/api/2.0/mlflow/users/create", body, admin)
    if status == 200:
        return True
    if "already exists" in str(answer.get("message", "")) or answer.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        return False
    if status == 401:  # MLflow's auth database keeps the admin password of the first start
        raise SystemExit(
            f"services: MLflow refused the admin login of {home / 'credentials.json'}: its auth database was made "
            "with another admin password (was credentials.json deleted or replaced after the first start?); put "
            "the first one back, or stop the services and drop the mlflow_auth database to make new logins"
        )
    raise SystemExit(f"services: creating MLflow user {name!r} failed ({status}): {answer.get('message', answer)}")


def grant(url: str, home: Path, name: str, model: str, permission: str = "EDIT") -> None:
    """Give user `name` `permission` on registered model `model` (EDIT: may set its aliases and tags)."""
    body = {"username": name, "resource_type": "registered_model", "resource_id": model, "permission": permission}
    status, answer = call(url, "/api/3.0/mlflow/users/permissions/grant", body, (ADMIN, stored(home)["mlflow_admin"]))
    if status != 200:
        raise SystemExit(f"services: granting {permission} on {model!r} to {name!r} failed ({status}): {answer}")


def write_env(path: Path, env: dict[str, str]) -> None:
    """`export K='V'` lines, for `set -a; . PATH; set +a` (and read_env), in a 0600 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private_file(path, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


def read_env(path: Path) -> dict[str, str]:
    """What write_env wrote, as a dict."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, value = line.removeprefix("export ").split("=", 1)
            out[key] = shlex.split(value)[0] if value else ""
    return out


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a reviewer's login, or None."""
    if NAME.fullmatch(name) and name not in (ADMIN, PIPELINE):
        return None
    return (
        f"user name {name!r} is not usable: letters, digits, '.', '_' or '-', starting with a letter, at most "
        f"64, and not {ADMIN!r} or {PIPELINE!r}"
    )


def add_user(home: Path, env: dict[str, str], name: str, models: list[str]) -> Path:
    """A reviewer's login: an MLflow user with a generated password (kept in HOME/users/NAME.env with the
    URLs and Prefect's credential, to answer a paused run), granted EDIT on each of `models`."""
    path = home / "users" / f"{name}.env"
    url = env["MLFLOW_TRACKING_URI"]
    if not path.exists():
        password = secrets.token_urlsafe(24)
        if not ensure_user(url, home, name, password):
            raise SystemExit(f"services: MLflow user {name!r} exists but {path} does not: pick another name")
        keep = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "DO_NOT_TRACK")
        own = {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}
        write_env(path, {**{k: env[k] for k in keep}, **own, "MLFLOW_DISABLE_TELEMETRY": "true"})
    for model in models:
        grant(url, home, name, model)
    return path
