"""Trials per hour with W tuning workers against one, on this machine: `vae tune --workers W`, alternated.

    python benchmarks/tune_workers.py [--trials 8] [--epochs 2] [--subset 4000] [--reps 2] [--json FILE]

Each arm is one `vae tune` process tree on a fresh SQLite study: the same seeded random sampler, no pruning,
the same trial count, the seed's model with only lr searched (so every trial costs the same). W=1 runs one
trial at a time on all cores; W=2 runs two at once, each on half of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae.child import last_json

SPACE = "lr = {low = 1e-4, high = 3e-3, log = true}\nbatch_size = 128\nlatent = 20\nhidden_width = 400\n"
SPACE += 'hidden_depth = 1\nmodel = "vae"\n'


def arm(workers: int, a: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "space.toml").write_text(SPACE)
        cmd = [
            sys.executable,
            "-m",
            "vae",
            "-q",
            "tune",
            "--workers",
            str(workers),
            "--trials",
            str(a.trials),
            "--epochs",
            str(a.epochs),
            "--subset",
            str(a.subset),
            "--sampler",
            "random",
            "--sampler-seed",
            "0",
            "--pruner",
            "none",
            "--space",
            f"{tmp}/space.toml",
            "--storage",
            f"sqlite:///{tmp}/o.db",
            "--tracking-uri",
            f"sqlite:///{tmp}/m.db",
            "--out",
            f"{tmp}/trials",
            "--json",
        ]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp).stdout
        seconds = time.perf_counter() - t0
        assert last_json(out)["trials"] == a.trials
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    runs: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(a.reps):
        for w in (1, 2):
            runs[w].append(arm(w, a))
            print(f"W={w}: {runs[w][-1]:.1f} s", file=sys.stderr, flush=True)
    per_hour = {w: 3600 * a.trials / statistics.median(s) for w, s in runs.items()}
    result = {
        "trials": a.trials,
        "epochs": a.epochs,
        "subset": a.subset,
        "reps": a.reps,
        "seconds": runs,
        "trials_per_hour": per_hour,
        "speedup": per_hour[2] / per_hour[1],
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print("| workers | wall s (median) | trials/hour |\n|---|---|---|")
    for w in (1, 2):
        print(f"| {w} | {statistics.median(runs[w]):.1f} | {per_hour[w]:.0f} |")
    print(f"W=2 / W=1: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
