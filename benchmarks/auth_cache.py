"""What MLflow's login check costs a night on the stack of `make services`, with and without the login cache
(vae/credentials.py, AUTH_CACHE_S): MLflow's basic-auth app checks the password's scrypt hash on every
request unless it may keep a good login for a while.

    python benchmarks/auth_cache.py [--calls 60] [--json FILE]

It starts the stack on a home of its own, then a second MLflow server on the same PostgreSQL backend whose
auth ini differs only in `auth_cache_ttl_seconds = 0`, and sends the same call (log_metric into one run, as
the pipeline's login: the call a training epoch makes most) to both, alternating blocks of 10, so that both
see the same load. It prints the milliseconds per call on each, the CPU seconds each server spent, and the
float32 matmul peak beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def services(home: Path, *args: str) -> None:
    done = subprocess.run([PY, "-m", "vae.services", *args, "--home", str(home)], cwd=ROOT, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"auth_cache: vae.services {' '.join(args)} failed:\n{done.stderr.decode()[-2000:]}")


def uncached_server(home: Path, port: int) -> subprocess.Popen:
    """An MLflow server on the stack's backend whose login check has no cache."""
    from vae import servers

    ini = home / "mlflow-auth-nocache.ini"
    text = (home / "mlflow-auth.ini").read_text()
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(ln for ln in text.splitlines(True) if not ln.startswith("auth_cache")))
        f.write("auth_cache_ttl_seconds = 0\n")
    u = servers.urls(home)
    from vae import credentials

    key = credentials.stored(home)["flask_secret"]
    env = {**os.environ, "PGPASSFILE": u["pgpass"], "MLFLOW_AUTH_CONFIG_PATH": str(ini)}
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [str(Path(PY).parent / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--backend-store-uri", u["mlflow_backend"]]
    cmd += ["--artifacts-destination", str(home / "artifacts")]
    log = open(home / "mlflow-nocache.log", "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def client_for(url: str, env: dict[str, str]):
    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_TRACKING_")} | {"MLFLOW_TRACKING_URI": url})
    from mlflow import MlflowClient

    return MlflowClient(url)


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a server and its children (uvicorn's worker) so far."""
    return sum(sum(pr.cpu_times()[:2]) for pr in [proc, *proc.children(recursive=True)])


def wait_up(client, deadline: float) -> None:
    while True:
        try:
            client.search_experiments(max_results=1)
            return
        except Exception:  # noqa: BLE001  (not up yet)
            if time.time() > deadline:
                raise
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=60, help="log_metric calls per server (default 60)")
    p.add_argument("--base-port", type=int, default=6700)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    peak = matmul_peak()
    print(f"matmul peak {peak:.0f} GFLOP/s (float32, idle)", flush=True)
    from vae import credentials

    home = Path(tempfile.mkdtemp(prefix="vae-auth-"))
    services(home, "start", "--base-port", str(a.base_port))
    second = None
    try:
        env = credentials.read_env(home / "client.env")
        second = uncached_server(home, a.base_port + 10)
        servers = {"cache on": json.loads((home / "pids.json").read_text())["mlflow"]["pid"], "cache off": second.pid}
        clients = {
            "cache on": client_for(env["MLFLOW_TRACKING_URI"], env),
            "cache off": client_for(f"http://127.0.0.1:{a.base_port + 10}", env),
        }
        for c in clients.values():
            wait_up(c, time.time() + 120)
        exp = clients["cache on"].create_experiment("auth-cache-bench")
        runs = {k: c.create_run(exp).info.run_id for k, c in clients.items()}
        spent = dict.fromkeys(clients, 0.0)
        cpu = {k: psutil.Process(pid) for k, pid in servers.items()}
        cpu_used = dict.fromkeys(clients, 0.0)
        for block in range(a.calls // 10):
            for k, c in clients.items():
                before = cpu_seconds(cpu[k])
                t = time.perf_counter()
                for i in range(10):
                    c.log_metric(runs[k], "loss", 1.0 / (1 + i), step=block * 10 + i)
                spent[k] += time.perf_counter() - t
                cpu_used[k] += cpu_seconds(cpu[k]) - before
        n = a.calls // 10 * 10
        out = {k: {"ms_per_call": 1e3 * spent[k] / n, "server_cpu_ms_per_call": 1e3 * cpu_used[k] / n} for k in clients}
        for k, v in out.items():
            print(f"{k}: {v['ms_per_call']:.1f} ms per log_metric, server CPU {v['server_cpu_ms_per_call']:.1f} ms")
        ratio = out["cache off"]["ms_per_call"] / out["cache on"]["ms_per_call"]
        print(f"auth_cache: {n} calls each; without the cache a call takes {ratio:.1f}x as long")
        if a.json:
            a.json.write_text(json.dumps({"command": " ".join(sys.argv), "matmul_gflops_idle": peak, "calls": n,
                                          "date": time.strftime("%Y-%m-%d"), **out}, indent=2) + "\n")  # fmt: skip
    finally:
        if second is not None:
            os.killpg(second.pid, 15)
        services(home, "stop")
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
