"""Issue 4's benchmark: the time of each stage of one pipeline run (`make run`'s flow), the share taken by
orchestration and tracking, and the peak memory of all its processes together.

    python benchmarks/pipeline_stages.py [--json benchmarks/results/pipeline_stages.json] [-- FLOW ARGS...]

Runs `python -m flows.pipeline` (default arguments: those of `make run`) in a fresh folder with a fresh
PREFECT_HOME, samples the summed RSS of the whole process tree (Prefect's temporary server, torchrun,
tuning and training subprocesses) every 0.2 s, and reads the stage times the flow returns. Orchestration =
process wall time minus the stages (Prefect start-up and teardown, flow bookkeeping); tracking = the
register and promote stages plus the MLflow time the tuner measured inside its trials and study summary.
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

from vae.child import last_json

MAKE_RUN = ["--dataset", "mnist-5k", "--trials", "8", "--epochs", "50", "--iw-samples", "100"]


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of `root` and all its descendants, read from /proc."""
    parent, rss = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(d.name)] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == pid and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(rss.get(pid, 0) for pid in tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("flow_args", nargs="*", default=MAKE_RUN)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp:
        env = {
            **os.environ,
            "PREFECT_HOME": f"{tmp}/prefect",
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.pipeline", *a.flow_args],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        root, peak, done = proc.pid, [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(root))
                time.sleep(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        out = proc.communicate()[0]
        wall = time.perf_counter() - t0
        done.set()
        thread.join()
        if proc.returncode != 0:
            raise SystemExit(f"the pipeline failed (exit {proc.returncode})")
        summary = last_json(out)
        # the tuner's own split of its stage: training vs MLflow logging, from its trials' user attributes
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = summary["tune"]["study"]  # the name the flow chose (it carries the search space's hash)
        trials = optuna.load_study(study_name=study, storage=f"sqlite:///{tmp}/mlruns/optuna.db").trials
    stages = summary["stage_seconds"]
    tune_tracking = sum(t.user_attrs.get("tracking_seconds", 0.0) for t in trials)
    tune_training = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    tracking = stages["register"] + stages["promote"] + tune_tracking + (summary["tune"].get("finish_seconds") or 0)
    orchestration = wall - sum(stages.values())
    result = {
        "wall_seconds": wall,
        "stages": stages,
        "tune_training_seconds": tune_training,
        "tune_tracking_seconds": tune_tracking,
        "tracking_seconds": tracking,
        "orchestration_seconds": orchestration,
        "overhead_share": (tracking + orchestration) / wall,
        "peak_rss_mb": peak[0] / 2**20,
        "test_neg_elbo": summary["test_neg_elbo"],
        "flow_args": a.flow_args,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\npython -m flows.pipeline {' '.join(a.flow_args)}")
    print("| stage | seconds | share |\n|---|---|---|")
    for k, v in stages.items():
        print(f"| {k} | {v:.1f} | {100 * v / wall:.0f}% |")
    print(
        f"| Prefect start-up, bookkeeping, teardown (wall minus stages) | {orchestration:.1f} | "
        f"{100 * orchestration / wall:.0f}% |"
    )
    print(f"| whole run | {wall:.1f} | 100% |")
    print(
        f"\ninside tune: training {tune_training:.1f} s, MLflow logging {tune_tracking:.1f} s over {len(trials)} trials"
    )
    print(
        f"orchestration + tracking: {tracking + orchestration:.1f} s = {100 * result['overhead_share']:.1f}% "
        f"of the run; peak memory of all processes together: {result['peak_rss_mb']:.0f} MB; "
        f"test -ELBO {summary['test_neg_elbo']:.2f} nats"
    )


if __name__ == "__main__":
    main()
