"""Code is part of a model's identity (issue 24): a change to the loss code makes the next night train and register
anew, where the same code on the same study would call its candidate already registered. The nights run as a
user runs them (`python -m flows.pipeline`) in a copy of the project, whose vae/losses.py the test edits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vae.code import code_version
from vae.tune.nightly import after_search

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_version_follows_every_edit_of_the_package(tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(ROOT / "vae", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(copy)
    assert before == code_version(ROOT / "vae") and len(before) == 12
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"not source")  # not the code
    assert code_version(copy) == before
    with open(copy / "losses.py", "a") as f:
        f.write("\n# a fix\n")
    assert code_version(copy) != before


def test_a_registered_trial_made_by_other_code_is_trained_again():
    plan = {"case": "same-data", "reason": "same data", "registered": {"trial": 0, "value": 90.0, "version": "1"}}
    summary = {"best_trial": 0, "best_value": 90.0}
    same = {**plan, "registered": {**plan["registered"], "code": "aaa"}}
    assert after_search(same, summary, "aaa")["case"] == "same-data-no-better"
    assert after_search(plan, summary, "bbb")["train"] is False  # registered before the code was recorded
    changed = after_search(same, summary, "bbb")
    assert (
        changed["train"]
        and changed["case"] == "new-code"
        and "the code changed since v1 (aaa -> bbb)" in changed["reason"]
    )


def _night(project: Path, tmp_path: Path) -> dict:
    args = ["--dataset", "mnist-5k", "--subset", "300", "--trials", "1", "--epochs", "1", "--min-epochs", "1"]
    args += ["--iw-samples", "0", "--study", "vae-code", "--model-name", "vae-code", "--workdir", str(tmp_path / "w")]
    args += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    env = {**os.environ, "PYTHONPATH": str(project)}
    r = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", *args], cwd=project, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_fix_to_the_loss_code_makes_the_next_night_train_and_register_anew(tmp_path):
    from mlflow import MlflowClient

    project = tmp_path / "project"
    for room in ("vae", "flows"):
        shutil.copytree(ROOT / room, project / room, ignore=shutil.ignore_patterns("__pycache__"))
    first = _night(project, tmp_path)
    assert first["version"] == "1", first
    with open(project / "vae" / "losses.py", "a") as f:
        f.write("\nFIXED = True  # a fix to the loss code\n")
    second = _night(project, tmp_path)
    assert second["case"] == "new-code" and "the code changed since v1" in second["reason"], second
    assert second["version"] == "2", second
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, uri)
    v1, v2 = (client.get_model_version("vae-code", v).tags for v in ("1", "2"))
    assert v1["code_version"] == code_version(ROOT / "vae") != v2["code_version"] == code_version(project / "vae")
    assert v1["candidate_key"] != v2["candidate_key"]  # not the cached candidate
    assert client.get_model_version("vae-code", "1").run_id != client.get_model_version("vae-code", "2").run_id


@pytest.mark.slow
def test_a_winning_trial_trained_by_other_code_is_trained_again_by_this_code(tmp_path):
    from vae.config import Config, DataConfig, TrainConfig
    from vae.night.params import PipelineParams
    from vae.night.steps import candidate_key, candidate_step

    stores = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "storage": f"sqlite:///{tmp_path}/o.db"}
    p = PipelineParams(subset=300, epochs=1, min_epochs=1, workdir=str(tmp_path / "w"), model_name="vae-code", **stores)
    cfg = Config(DataConfig(subset=300), train=TrainConfig(epochs=1, progress=False))
    winner = {"best_trial": 0, "best_config": cfg.to_dict(), "best_checkpoint": None, "best_run_id": None,
              "best_model_uri": None, "best_model_id": None, "best_code_version": "0ld0ld0ld0ld"}  # fmt: skip
    lines: list[str] = []
    trained = candidate_step(p, winner, "f" * 64, log=lines.append)
    assert "trial 0 was trained by other code: training its configuration with this code" in lines
    key = candidate_key(Config.from_dict(trained["config"]), "f" * 64)
    assert trained["candidate_key"] == key and Path(trained["out"]) == tmp_path / "w" / f"train-{key}"
    assert Path(trained["best_checkpoint"]).is_file() and trained["epochs_run"] == 1
