"""The stack's servers, one by one: where each listens (HOME/ports.json), what a client sets to reach them, and
how each is started from its own binary (pg_ctl, mlflow, prefect) as a process group of its own, logging to
HOME/<name>.log. vae.services starts, stops and restarts the stack with these; `restart` brings one service
back after it died (the fault matrix, benchmarks/faults.py, kills them on purpose) with its data and logins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from vae import credentials
from vae.postgres import USER
from vae.stores import holder

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORTS = {"postgres": 5433, "mlflow": 5000, "prefect": 4200}


def ports(home: Path) -> dict[str, int]:
    """The ports of this home's services: chosen at the first start (--base-port), kept in HOME/ports.json."""
    saved = home / "ports.json"
    return json.loads(saved.read_text()) if saved.exists() else dict(DEFAULT_PORTS)


def urls(home: Path) -> dict[str, str]:
    port = ports(home)
    pg = f"postgresql+psycopg://{USER}@127.0.0.1:{port['postgres']}"
    return {
        "mlflow": f"http://127.0.0.1:{port['mlflow']}",
        "prefect": f"http://127.0.0.1:{port['prefect']}/api",
        "optuna": f"{pg}/optuna",
        "mlflow_backend": f"{pg}/mlflow",
        "pgpass": str(home / "pgpass"),
    }


def client_env(home: Path) -> dict[str, str]:
    """What a client of these services sets (the pipeline, `vae tune`, a worker): URLs and the pipeline's
    logins. Secrets among them: keep it in files of mode 0600 (HOME/client.env) and in environments."""
    u = urls(home)
    return {
        **credentials.logins(home),
        "MLFLOW_TRACKING_URI": u["mlflow"],
        "PREFECT_API_URL": u["prefect"],
        "VAE_OPTUNA_STORAGE": u["optuna"],
        "PGPASSFILE": u["pgpass"],
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the worker's flow runs beat; flows.deploy's automation marks one that stops beating Crashed
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    }


def tool(name: str) -> str:
    """A command of this environment (mlflow, prefect): the one installed beside the running Python."""
    return str(Path(sys.executable).parent / name)


def spawn(home: Path, name: str, cmd: list[str], env: dict[str, str]) -> int:
    log = open(home / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own group: stop() ends it and its children
    return proc.pid


def wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"services: {url} did not answer within {seconds} s")


def webhook_env(home: Path) -> dict[str, str]:
    """What lets the MLflow server call a receiver on this machine (a relay on 127.0.0.1: MLflow refuses
    private addresses and plain http by default)."""
    saved = home / "notify.json"
    url = json.loads(saved.read_text())["url"] if saved.exists() else ""
    if urllib.parse.urlsplit(url).hostname not in LOOPBACK:
        return {}
    return {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true"}


def mlflow_server(home: Path) -> dict:
    """The MLflow server (basic-auth app, backend in PostgreSQL, artifacts under HOME/artifacts): its holder."""
    u, port = urls(home), ports(home)["mlflow"]
    login = credentials.mlflow_server_env(home, u["mlflow_backend"] + "_auth")
    cmd = [tool("mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--backend-store-uri", u["mlflow_backend"]]
    cmd += ["--artifacts-destination", str(home / "artifacts")]
    env = {"PGPASSFILE": u["pgpass"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **login, **webhook_env(home)}
    return holder(spawn(home, "mlflow", cmd, env))


def prefect_server(home: Path) -> dict:
    """The Prefect server (SQLite under HOME/prefect, behind the auth string): its holder."""
    env = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(ports(home)["prefect"]),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_AUTH_STRING": client_env(home)["PREFECT_API_AUTH_STRING"],
    }
    return holder(spawn(home, "prefect", [tool("prefect"), "server", "start"], env))
