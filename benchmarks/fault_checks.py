"""What must hold after a fault and the next night (benchmarks/faults.py): read from the live MLflow server
and the process table, by rules stated here from the README's contract, not by calling the code under test."""

from __future__ import annotations

import json
import os
import time

import psutil

PROMOTED_AT, DECISION = "champion.promoted_at", "promotion.decision"


def survivors(seen: dict[int, float], grace: float = 30) -> list[str]:
    """Processes seen under the faulted night (pid, start time) still alive `grace` s after it ended."""
    deadline = time.time() + grace
    while True:
        alive = []
        for pid, started in seen.items():
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - started) < 1 and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} ({' '.join(proc.cmdline()[:4])})")
            except psutil.Error:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(1)


def registry_failures(client, model: str) -> list[str]:
    """Every version judged, candidate keys unique, champion = the last of the history (promotion stamps
    in order, less the rolled-back versions)."""
    failures = []
    versions = client.search_model_versions(f"name='{model}'")
    if not versions:
        return [f"no version of {model} is registered"]
    undecided = [v.version for v in versions if DECISION not in v.tags]
    if undecided:
        failures.append(f"versions without a promotion decision: {', '.join(map(str, undecided))}")
    keys = [v.tags.get("candidate_key") for v in versions]
    repeated = sorted({k for k in keys if k and keys.count(k) > 1})
    if repeated:
        failures.append(f"candidate keys shared by two versions: {', '.join(repeated)}")
    stamped = sorted(
        (int(v.tags[PROMOTED_AT]), int(v.version))
        for v in versions
        if PROMOTED_AT in v.tags and v.tags.get("rolled_back") != "true"
    )
    try:
        champion = int(client.get_model_version_by_alias(model, "champion").version)
    except Exception:
        champion = None
    last = stamped[-1][1] if stamped else None
    if champion != last:
        failures.append(f"champion is v{champion} but the champion history ends at v{last}")
    return failures


# where a run says why it ended: a training run's error, a night's reason, a trial's reason (vae/tracking/study.py)
WHY = ("error", "nightly.reason", "reason")


def run_failures(client, model: str) -> list[str]:
    """No run of the model's experiment left RUNNING; every FAILED or KILLED one says why."""
    experiment = client.get_experiment_by_name(model)
    if experiment is None:
        return [f"no MLflow experiment {model}"]
    failures = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        status, tags = run.info.status, run.data.tags
        name = f"{run.info.run_name or run.info.run_id} ({run.info.run_id[:8]})"
        if status == "RUNNING":
            failures.append(f"run {name} left RUNNING")
        elif status in ("FAILED", "KILLED") and not any(tags.get(k) for k in WHY):
            failures.append(f"run {name} is {status} without a non-empty {', '.join(WHY)} tag")
    return failures


def check(env: dict[str, str], model: str, next_exit: int, seen: dict[int, float]) -> list[str]:
    failures = [] if next_exit == 0 else [f"the next night exited {next_exit}"]
    if alive := survivors(seen):
        failures.append(f"processes of the faulted night still alive: {'; '.join(alive[:3])}")
    os.environ.update(env)
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    failures += registry_failures(client, model)
    failures += run_failures(client, model)
    return failures


if __name__ == "__main__":  # a look at one model's state: python benchmarks/fault_checks.py MODEL
    import sys

    from mlflow import MlflowClient

    c = MlflowClient()
    print(json.dumps(registry_failures(c, sys.argv[1]) + run_failures(c, sys.argv[1]), indent=1))
