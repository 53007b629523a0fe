"""What a reviewer reads in MLflow before and after a promotion: the comparison artifact on the candidate's
run (comparison/: comparison.md, comparison.json, reconstructions.png, samples.png) and the model card, the
registered version's description."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vae.tracking.store import open_client

COMPARISON = "comparison"


def log_comparison(uri: str, run_id: str, folder: str | Path) -> None:
    """The files of `folder` under comparison/ on the run; a second call replaces them (the final decision
    after a sign-off replaces the gate's)."""
    client = open_client(uri)
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=COMPARISON)


def git_commit(uri: str, run_id: str) -> str | None:
    """The commit MLflow recorded for the run (mlflow.source.git.commit: from the entry point's checkout),
    else the commit of the checkout this package runs from, else None."""
    tagged = open_client(uri).get_run(run_id).data.tags.get("mlflow.source.git.commit")
    if tagged:
        return tagged
    try:
        r = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def set_model_card(uri: str, name: str, version: str, text: str) -> None:
    open_client(uri).update_model_version(name, str(version), description=text)
