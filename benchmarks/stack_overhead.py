"""The team stack's cost: one tiny night through `make services` (a worker on a work pool, PostgreSQL-backed
MLflow and Optuna) against the same night as `python -m flows.pipeline` (embedded SQLite, no servers), and
the peak memory of the whole stack while the night runs.

    python benchmarks/stack_overhead.py [--json FILE]

Memory: the summed RSS of every process of the stack (PostgreSQL, both servers, the worker and the night it
runs), sampled every 0.5 s by psutil. Wall: from the trigger (`prefect deployment run --watch`) to Completed,
against the whole `python -m flows.pipeline` process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from vae import credentials

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"trials": 2, "min_epochs": 1, "epochs": 2, "subset": 1000, "iw_samples": 10}


def stack_rss(home: Path) -> int:
    """Bytes of RSS of every process whose command line names this stack's home, and their children."""
    total, seen = 0, set()
    for proc in psutil.process_iter(["pid", "cmdline", "username"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(home) in cmd or (proc.info["username"] == "postgres" and "postgres" in cmd):
                for p in [proc, *proc.children(recursive=True)]:
                    if p.pid not in seen:
                        seen.add(p.pid)
                        total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vae-stack-"))
    python, prefect = sys.executable, str(Path(sys.executable).parent / "prefect")
    subprocess.run(
        [python, "-m", "vae.services", "start", "--home", str(home), "--base-port", "7433"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    env = {
        **os.environ,
        **credentials.read_env(home / "client.env"),
        "PREFECT_HOME": str(home / "prefect"),
    }
    try:
        idle = stack_rss(home)
        args = [f"--param={k}={v}" for k, v in PARAMS.items()] + [f'--param=workdir="{home / "work"}"']
        subprocess.run(
            [python, "-m", "flows.deploy", "--work-pool", "vae", "--trials", "2", "--epochs", "2", *args],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(stack_rss(home))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        run = subprocess.run(
            [prefect, "deployment", "run", "vae-pipeline/nightly", "--watch"], env=env, capture_output=True, text=True
        )
        worker_wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        assert "Completed" in run.stdout, run.stdout[-2000:]
    finally:
        subprocess.run([python, "-m", "vae.services", "stop", "--home", str(home)], cwd=REPO, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in PARAMS.items()]
        t0 = time.perf_counter()
        subprocess.run(
            [python, "-m", "flows.pipeline", *flags, f"--workdir={tmp}/work"],
            cwd=tmp,
            check=True,
            capture_output=True,
            env={**os.environ, "PREFECT_HOME": f"{tmp}/prefect"},
        )
        direct_wall = time.perf_counter() - t0
    result = {
        "params": PARAMS,
        "worker_route_s": worker_wall,
        "direct_s": direct_wall,
        "overhead_s": worker_wall - direct_wall,
        "stack_idle_mb": idle / 2**20,
        "stack_peak_mb": max(peak) / 2**20,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
