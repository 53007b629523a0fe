"""What live MLflow tracking costs `vae train`: the same training with and without --tracking-uri, alternated.

    python benchmarks/tracking_overhead.py [--epochs 5] [--reps 3] [--full-only] [--json FILE]

Each run is its own `vae train` process (seed model, batch 128): untracked, tracked to a fresh SQLite
store, and tracked with MLflow's system-metrics sampler off (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false),
in turn. Reported per data set (mnist-5k, and full MNIST from ../shared when present): the median
steady-state epoch time (epochs 2..E; the step loop, where the system-metrics thread competes for the
cores), the time spent logging each epoch (measured inside the process), and the overhead per epoch as a
share of the untracked epoch time: (tracked epoch + logging) / untracked epoch - 1. Separate processes differ
by several percent on a shared VM, so the spread of the untracked arm is printed beside it, and the direct
costs too: the logging time per epoch as a share of the epoch, and the CPU of one system-metrics sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_speed import matmul_peak  # noqa: E402

from vae.child import last_json  # noqa: E402
from vae.tracking.live import SYSTEM_METRICS_SECONDS  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "mnist"


NO_SYSTEM_METRICS = {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
ARMS = {"untracked": (False, {}), "tracked": (True, {}), "tracked_no_sysmetrics": (True, NO_SYSTEM_METRICS)}


def train(dataset: str, epochs: int, arm: str) -> dict:
    tracked, extra = ARMS[arm]
    env = {**os.environ, **extra}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "vae",
            "-q",
            "train",
            "--dataset",
            dataset,
            "--epochs",
            str(epochs),
            "--out",
            f"{tmp}/run",
            "--no-progress",
            "--json",
        ]
        if tracked:
            cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO, env=env).stdout
        summary = last_json(out)
        history = json.loads((Path(tmp) / "run" / "history.json").read_text())["history"]
    steady = [h["epoch_seconds"] for h in history][1:]
    return {"epoch_seconds": statistics.median(steady), "log_seconds": summary.get("epoch_log_seconds", 0) / epochs}


def sampler_cpu_seconds(samples: int = 5) -> float:
    """CPU seconds of one system-metrics sample as MLflow's monitor takes it (collect, the run's status, log)."""
    from mlflow import MlflowClient
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("sampler"))
        monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=uri)
        t0 = time.process_time()
        for _ in range(samples):
            monitor.collect_metrics()
            MlflowClient(uri).get_run(run.info.run_id)
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        return (time.process_time() - t0) / samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--full-only", action="store_true", help="full MNIST only (the goal's data set), not mnist-5k")
    a = p.parse_args()
    datasets = ([] if a.full_only else ["mnist-5k"]) + ([f"idx:{SHARED}"] if SHARED.is_dir() else [])
    peak = matmul_peak()
    rows = {}
    for dataset in datasets:
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for _ in range(a.reps):
            for arm in ARMS:
                runs[arm].append(train(dataset, a.epochs, arm))
        med = {arm: statistics.median(r["epoch_seconds"] for r in runs[arm]) for arm in ARMS}
        logging = {arm: statistics.median(r["log_seconds"] for r in runs[arm]) for arm in ARMS}
        name = "mnist" if dataset.startswith("idx:") else dataset
        rows[name] = {f"{arm}_epoch_s": med[arm] for arm in ARMS}
        rows[name]["log_s_per_epoch"] = logging["tracked"]
        rows[name]["log_share_pct"] = 100 * logging["tracked"] / med["untracked"]
        plain = [r["epoch_seconds"] for r in runs["untracked"]]
        rows[name]["untracked_spread_pct"] = 100 * (max(plain) - min(plain)) / med["untracked"]
        for arm in ("tracked", "tracked_no_sysmetrics"):
            rows[name][f"{arm}_overhead_pct"] = 100 * ((med[arm] + logging[arm]) / med["untracked"] - 1)
    sampler = sampler_cpu_seconds()
    result = {"epochs": a.epochs, "reps": a.reps, "matmul_peak_gflops": peak, "rows": rows}
    result["sampler_cpu_s_per_sample"] = sampler
    result["sampler_pct_of_one_core"] = 100 * sampler / SYSTEM_METRICS_SECONDS
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul peak {peak:.0f} GFLOP/s (measured in this run)")
    print(
        "| data | untracked s/epoch (spread) | tracked s/epoch | logging s/epoch (share) | overhead "
        "| without system metrics |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['untracked_epoch_s']:.3f} ({r['untracked_spread_pct']:.0f}%) | {r['tracked_epoch_s']:.3f} "
            f"| {r['log_s_per_epoch']:.4f} ({r['log_share_pct']:.2f}%) | {r['tracked_overhead_pct']:+.1f}% "
            f"| {r['tracked_no_sysmetrics_overhead_pct']:+.1f}% |"
        )
    print(
        f"system-metrics sampler: {sampler * 1e3:.1f} ms of CPU per sample, one every {SYSTEM_METRICS_SECONDS:g} s: "
        f"{result['sampler_pct_of_one_core']:.2f}% of one core"
    )


if __name__ == "__main__":
    main()
