"""The shared services a team runs, on this machine: PostgreSQL, an MLflow server backed by it, Optuna's
storage in it, a Prefect server, and one process worker on a work pool, all behind a login. `make services` /
`make services-stop`; the embedded default (SQLite, no servers) stays what `make run` uses. Each service is a
process started from its own binary (pg_ctl, mlflow, prefect): nothing here imports Prefect or MLflow, which
is why it lives in vae/ and not in flows/.

    python -m vae.services start [--home .services] [--pool vae]   # prints the URLs and the env file to read
    set -a; . .services/client.env; set +a                         # the pipeline's login, for flows and vae
    python -m vae.services user ada --grant vae-mnist-5k           # a reviewer's login: .services/users/ada.env
    python -m vae.services status
    python -m vae.services worker                                  # one more worker on the pool
    python -m vae.services restart mlflow                          # bring back one that died (or postgres, prefect)
    python -m vae.services stop

Everything listens on 127.0.0.1 and needs a login (vae/credentials.py): MLflow runs its basic-auth app (users
`admin` and `pipeline`, reviewers added with `user`), Prefect its auth string. The passwords are generated at
the first start and kept in files of mode 0600 (HOME/credentials.json, HOME/client.env, HOME/pgpass, which
libpq reads through PGPASSFILE): no URL, command line, Prefect parameter or MLflow tag ever holds one. Before
opening any of this to a network, put TLS in front of the MLflow and Prefect servers (a reverse proxy), and
give PostgreSQL its own users and pg_hba rules.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vae import credentials, postgres
from vae.postgres import as_postgres, pg_bin, run
from vae.servers import (
    DEFAULT_PORTS,
    client_env,
    mlflow_server,
    ports,
    prefect_server,
    spawn,
    tool,
    urls,
    wait_http,
    webhook_env,
)
from vae.stores import holder, holder_alive


def start(home: Path, pool: str, base_port: int | None = None) -> dict[str, str]:
    """Every service of `home`, in order (PostgreSQL, the servers, the `pipeline` login, the pool, a worker),
    and the notifications of HOME/notify.json if there is one; the client environment."""
    home.mkdir(parents=True, exist_ok=True)
    if (home / "pids.json").exists():
        raise SystemExit(f"services: already started ({home}/pids.json): `python -m vae.services stop` first")
    if base_port is not None:
        (home / "ports.json").write_text(json.dumps({k: base_port + i for i, k in enumerate(DEFAULT_PORTS)}))
    postgres.start(home, ports(home)["postgres"])
    env = client_env(home)
    pids = {"mlflow": mlflow_server(home), "prefect": prefect_server(home)}
    (home / "pids.json").write_text(json.dumps(pids))
    wait_http(urls(home)["mlflow"] + "/health")
    wait_http(urls(home)["prefect"] + "/health")
    credentials.ensure_user(env["MLFLOW_TRACKING_URI"], home, credentials.PIPELINE, env["MLFLOW_TRACKING_PASSWORD"])
    credentials.write_env(home / "client.env", env)
    client = {**os.environ, **env, "PREFECT_HOME": str(home / "prefect")}
    run(
        [tool("prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
        env=client,
    )
    add_worker(home, pool)
    if (home / "notify.json").exists():
        notify(home, client)
    return env


def notify(home: Path, client: dict[str, str]) -> None:
    """Point the night's Prefect automations (flows/notify.py: a failed night, a waiting sign-off, a drifted
    champion) and the registry's MLflow webhook (new versions, alias moves; signed when a secret was given)
    at the URL of HOME/notify.json. The URL and the secret go to the two commands in their environment."""
    saved = json.loads((home / "notify.json").read_text())
    root, python = Path(__file__).resolve().parents[1], sys.executable
    env = {**client, "VAE_NOTIFY_URL": saved["url"]}
    private = ["--allow-private"] if webhook_env(home) else []
    run([python, "-m", "flows.notify", *private], env=env, cwd=root)
    admin = {
        "MLFLOW_TRACKING_USERNAME": credentials.ADMIN,
        "MLFLOW_TRACKING_PASSWORD": credentials.stored(home)["mlflow_admin"],
    }
    signed = ["--secret-env", "VAE_NOTIFY_SECRET"] if saved.get("secret") else []
    hook = [python, "-m", "vae", "registry", "notify", "--tracking-uri", client["MLFLOW_TRACKING_URI"], *signed]
    run(hook, env={**env, **admin, "VAE_NOTIFY_SECRET": saved.get("secret") or ""}, cwd=root)


def add_worker(home: Path, pool: str) -> int:
    """One more `prefect worker` on the pool (on this machine; other machines run the same command with
    the client environment); its pid joins pids.json as worker, worker-2, ..."""
    pids = json.loads((home / "pids.json").read_text())
    name = "worker" if "worker" not in pids else f"worker-{sum(k.startswith('worker') for k in pids) + 1}"
    prefect = tool("prefect")
    pids[name] = holder(
        spawn(
            home,
            name,
            [prefect, "worker", "start", "--pool", pool],
            {**client_env(home), "PREFECT_HOME": str(home / "prefect")},
        )
    )
    (home / "pids.json").write_text(json.dumps(pids))
    return pids[name]["pid"]


def stop(home: Path) -> None:
    """Workers first, then the servers, then PostgreSQL. A worker starts each flow run as a process of its own
    group, so the night a worker is running (and its `vae` children) are found as the worker's descendants
    and stopped too: no night goes on writing its work folder after the stack is gone."""
    import psutil

    pids = running(home)
    order = [k for k in pids if k.startswith("worker")] + ["prefect", "mlflow"]
    procs = []
    for name in order:
        if name in pids:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(pids[name])
                procs += [leader, *leader.children(recursive=True)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pids[name], signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for name in order:
        if name in pids and _alive(pids[name]):
            os.killpg(pids[name], signal.SIGKILL)
    if (home / "pg").exists():
        subprocess.run(
            [*as_postgres(), str(pg_bin() / "pg_ctl"), "-D", str(home / "pg"), "-m", "fast", "stop"],
            capture_output=True,
        )
    (home / "pids.json").unlink(missing_ok=True)


SERVERS = {"mlflow": mlflow_server, "prefect": prefect_server}


def restart(home: Path, name: str) -> None:
    """Bring one service of a started stack back (after it died, or stopping it first if it still runs), with
    its data and logins: PostgreSQL through pg_ctl (a crashed cluster recovers from its WAL), a server from its
    binary again, its new pid in pids.json."""
    if not (home / "pids.json").exists():
        raise SystemExit(f"services: not started ({home}/pids.json is missing): `python -m vae.services start`")
    if name == "postgres":
        postgres.start(home, ports(home)["postgres"])
        return
    live = running(home)
    if name in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(live[name], signal.SIGTERM)
        deadline = time.time() + 20
        while _alive(live[name]) and time.time() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(live[name], signal.SIGKILL)
    pids = json.loads((home / "pids.json").read_text())
    pids[name] = SERVERS[name](home)
    (home / "pids.json").write_text(json.dumps(pids))
    wait_http(urls(home)[name] + "/health")


def running(home: Path) -> dict[str, int]:
    """The pids of pids.json that are still the processes started (pid and start time agree): a pid the system
    has given to another process since (a reboot, a wrap) is named and left alone, never signalled."""
    records = json.loads((home / "pids.json").read_text()) if (home / "pids.json").exists() else {}
    live = {}
    for name, rec in records.items():
        rec = rec if isinstance(rec, dict) else {"pid": rec}  # a pids.json written before start times were kept
        if holder_alive(rec):
            live[name] = int(rec["pid"])
        else:
            print(f"{name}: pid {rec['pid']} is gone or now another process: left alone")
    return live


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _keep_notify(p: argparse.ArgumentParser, home: Path, url: str, secret_env: str | None) -> None:
    if not url.startswith(("http://", "https://")):
        p.error(f"--notify {url!r} is invalid: expected an http(s) URL such as https://hooks.example/vae")
    if secret_env and not os.environ.get(secret_env):
        p.error(f"--notify-secret-env {secret_env}: that environment variable is not set or empty")
    home.mkdir(parents=True, exist_ok=True)
    secret = os.environ.get(secret_env) if secret_env else None
    credentials.private_file(home / "notify.json", json.dumps({"url": url, "secret": secret}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "action",
        choices=["start", "stop", "status", "worker", "user", "restart"],
        help="worker: start one more worker; user NAME: a reviewer's MLflow login; restart NAME: bring back "
        "postgres, mlflow or prefect",
    )
    p.add_argument("name", nargs="?", help="user: the reviewer's name; restart: postgres, mlflow or prefect")
    p.add_argument("--grant", action="append", default=[], metavar="MODEL", help="user: EDIT on this model")
    p.add_argument("--home", type=Path, default=Path(".services"), help="data, logs and pids (git-ignored)")
    p.add_argument(
        "--notify",
        metavar="URL",
        help="start: send failed nights, waiting sign-offs, drift, new versions and alias moves here (kept, 0600, "
        "for the next starts); a chat's incoming-webhook URL or a relay",
    )
    p.add_argument("--notify-secret-env", metavar="VAR", help="start: sign the MLflow calls with the secret in $VAR")
    p.add_argument("--pool", default="vae", help="the Prefect work pool the worker serves")
    p.add_argument(
        "--base-port", type=int, help="postgres on this port, mlflow +1, prefect +2 (default 5433, 5000, 4200)"
    )
    a = p.parse_args(argv)
    home = a.home.resolve()
    if a.action == "stop":
        stop(home)
        print(f"services stopped ({home})")
    elif a.action == "restart":
        if a.name not in ("postgres", *SERVERS):
            p.error(f"restart {a.name!r}: expected postgres, mlflow or prefect")
        restart(home, a.name)
        print(f"{a.name} restarted ({home})")
    elif a.action == "worker":
        print(f"worker pid {add_worker(home, a.pool)} on pool {a.pool!r}")
    elif a.action == "user":
        if not a.name or (problem := credentials.name_problem(a.name)):
            p.error(problem if a.name else "user needs a NAME: python -m vae.services user ada --grant vae-mnist-5k")
        path = credentials.add_user(home, client_env(home), a.name, a.grant)
        granted = f", EDIT on {', '.join(a.grant)}" if a.grant else ""
        print(f"{a.name}: MLflow login in {path} (mode 0600){granted}\nset -a; . {path}; set +a")
    elif a.action == "status":
        for name, pid in running(home).items():
            print(f"{name:>8}: pid {pid} running")
        print(f"postgres: {'running' if (home / 'pg' / 'postmaster.pid').exists() else 'stopped'}")
    else:
        if a.notify:
            _keep_notify(p, home, a.notify, a.notify_secret_env)
        try:
            start(home, a.pool, a.base_port)
        except BaseException:
            stop(home)
            raise
        u = urls(home)
        print(
            f"MLflow   {u['mlflow']}\nPrefect  {u['prefect'].removesuffix('/api')}\nOptuna   {u['optuna']}\n"
            f"worker   on work pool {a.pool!r}\nlogins   {home / 'client.env'} (mode 0600)\n\n"
            f"set -a; . {home / 'client.env'}; set +a"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
