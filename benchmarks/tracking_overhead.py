"""What live MLflow tracking costs `vae train`: the same training with and without --tracking-uri, alternated.

    python benchmarks/tracking_overhead.py [--epochs 5] [--reps 3] [--json FILE]

Each run is its own `vae train` process (seed model, batch 128), untracked and tracked to a fresh SQLite
store in turn. Reported per data set (mnist-5k, and full MNIST from ../shared when present): the median
steady-state epoch time (epochs 2..E; the step loop, where the system-metrics thread competes for the
cores), the time spent logging each epoch (measured inside the process), and the overhead per epoch as a
share of the untracked epoch time: (tracked epoch + logging) / untracked epoch - 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mnist"


def train(dataset: str, epochs: int, tracked: bool) -> dict:
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
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
        summary = json.loads(out.strip().splitlines()[-1])
        history = json.loads((Path(tmp) / "run" / "history.json").read_text())["history"]
    steady = [h["epoch_seconds"] for h in history][1:]
    return {"epoch_seconds": statistics.median(steady), "log_seconds": summary.get("epoch_log_seconds", 0) / epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    datasets = ["mnist-5k"] + ([f"idx:{SHARED}"] if SHARED.is_dir() else [])
    rows = {}
    for dataset in datasets:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(a.reps):
            for tracked in (False, True):
                runs[tracked].append(train(dataset, a.epochs, tracked))
        plain = statistics.median(r["epoch_seconds"] for r in runs[False])
        tracked = statistics.median(r["epoch_seconds"] for r in runs[True])
        logging = statistics.median(r["log_seconds"] for r in runs[True])
        name = "mnist" if dataset.startswith("idx:") else dataset
        rows[name] = {
            "untracked_epoch_s": plain,
            "tracked_epoch_s": tracked,
            "log_s_per_epoch": logging,
            "overhead_pct": 100 * ((tracked + logging) / plain - 1),
        }
    result = {"epochs": a.epochs, "reps": a.reps, "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print("| data | untracked s/epoch | tracked s/epoch | logging s/epoch | overhead |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['untracked_epoch_s']:.3f} | {r['tracked_epoch_s']:.3f} | {r['log_s_per_epoch']:.4f} "
            f"| {r['overhead_pct']:+.1f}% |"
        )


if __name__ == "__main__":
    main()
