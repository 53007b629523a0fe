"""Nightly retraining through the real flow (issue 11): the cases of a night on a folder of PNG digits that
grows, a changed setting, bad files in the drop, a night killed mid-training and the next one resuming it,
and two overlapping runs of the nightly deployment on a live Prefect server. Real MNIST digits (the
embedded mnist-5k), real Prefect, MLflow (SQLite), Optuna (SQLite) and torch; tiny budgets."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import prefect_api, start_server, stop_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Every parameter fixed: each trial computes the same small model, so a second night on the same data
# cannot find a better one (and a first night is quick).
# A space of one point, the seed recipe itself: every trial trains the same model, so the cases are what is tested.
FIXED_SPACE = "lr = 0.001\nbatch_size = 128\nlatent = 20\nhidden_width = 400\nhidden_depth = 1\nmodel = 'vae'\n"


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_pngs(mnist5k, folder: Path, start: int, stop: int) -> None:
    images, labels = mnist5k.train.images.numpy(), mnist5k.train.labels.numpy()
    for i in range(start, stop):
        (folder / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / str(labels[i]) / f"{i:05d}.png")


def params(tmp_path, drop, **kw):
    space = tmp_path / "space.toml"
    space.write_text(FIXED_SPACE)
    p = dict(
        dataset=f"folder:{drop}",
        subset=300,
        trials=1,
        min_epochs=1,
        epochs=1,
        iw_samples=0,
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        workdir=str(tmp_path / "work"),
        model_name="vae-night",
        space=str(space),
    )
    p.update(kw)
    return p


def versions(uri):
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(uri, uri).search_model_versions("name='vae-night'"))


def night_runs(uri, case):
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("vae-night")
    return client.search_runs([exp.experiment_id], f"tags.`nightly.case` = '{case}'")


def test_nights_on_a_growing_folder(harness, tmp_path, monkeypatch, mnist5k):
    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    drop = tmp_path / "drop"
    write_pngs(mnist5k, drop, 0, 1000)
    # bad files in the drop: each skipped whole and named, the rest read
    (drop / "3" / "broken.png").write_text("not an image")
    Image.fromarray(mnist5k.train.images[0].numpy()[:20, :20]).save(drop / "4" / "small.png")
    (drop / "cats").mkdir()
    Image.fromarray(mnist5k.train.images[1].numpy()).save(drop / "cats" / "a.png")
    (drop / "notes.txt").write_text("dropped by hand")
    p = params(tmp_path, drop)
    uri = p["tracking_uri"]

    first = vae_pipeline(**p)
    assert first["night"]["case"] == "first-night" and first["decision"]["promote"]
    assert first["night"]["skipped_files"] == 4
    assert night_runs(uri, "first-night")[0].data.tags["nightly.reason"] == "no earlier study of vae-night"
    assert versions(uri) == [1]

    second = vae_pipeline(**p)  # same data, same settings: one more trial, no better configuration
    assert second["night"]["case"] == "same-data-no-better", second["night"]
    assert second["registered"] is None and second["record"]["champion"] == "1"
    assert second["study"]["study"] == first["study"]["study"] and second["study"]["trials"] == 2
    assert versions(uri) == [1]
    quiet = night_runs(uri, "same-data-no-better")
    assert len(quiet) == 1 and quiet[0].data.tags["champion"] == "1"

    write_pngs(mnist5k, drop, 1000, 1500)  # 500 new images arrive
    third = vae_pipeline(**p)
    assert third["night"]["case"] == "new-data", third["night"]
    assert third["study"]["study"] != first["study"]["study"]
    assert third["night"]["warm_start_from"] == first["study"]["study"]
    # the recipe first; the champion's and the warm-start configs are the recipe too, so queued once
    assert third["night"]["seeded"] == [{"origin": "recipe", "params": first["study"]["best_params"]}]
    assert third["metrics"]["fingerprint"] != first["metrics"]["fingerprint"]
    assert versions(uri) == [1, 2]
    # the champion re-scored on the new test images, image by image: the gate decided on a paired interval
    d = third["decision"]
    assert d["champion"] == "1" and d["interval"]["images"] == third["metrics"]["images"] > 0, d
    assert re.search(r"champion v1 .*95% interval \[-?[0-9.]+, -?[0-9.]+\] nats over \d+ images", d["reason"]), d

    space = tmp_path / "space-beta.toml"  # a changed setting (one more, default, entry): its own study
    space.write_text(FIXED_SPACE + "beta = 1.0\n")
    fourth = vae_pipeline(**{**p, "space": str(space)})
    assert fourth["night"]["case"] == "new-settings", fourth["night"]
    assert "space.beta.value: null -> 1.0" in fourth["night"]["reason"], fourth["night"]["reason"]
    # the fixed space trains the same model as night 3 on the same data: never a duplicate version
    assert fourth["registered"] is None and "already registered as v2" in fourth["night"]["reason"]
    assert versions(uri) == [1, 2]
    assert fourth["study"]["study"] not in (first["study"]["study"], third["study"]["study"])


def test_a_drop_with_no_good_image_is_refused_in_one_line(tmp_path):
    drop = tmp_path / "drop"
    (drop / "7").mkdir(parents=True)
    (drop / "7" / "x.png").write_bytes(b"\x89PNG broken")
    r = subprocess.run(
        [sys.executable, "-m", "vae", "data", "info", "--dataset", f"folder:{drop}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2 and "no readable 28x28 PNG" in r.stderr, r.stderr


def _flow(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kw,
    )


def test_a_night_killed_mid_training_is_resumed_by_the_next(tmp_path, mnist5k):
    drop = tmp_path / "drop"
    write_pngs(mnist5k, drop, 0, 600)
    p = params(tmp_path, drop, epochs=120)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in p.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    killed = _flow(args, env, cwd=tmp_path)
    deadline = time.time() + 240
    checkpoints = "studies/*/trial-*/checkpoint.pt"  # the night's one trial is training
    while time.time() < deadline and not list((tmp_path / "work").glob(checkpoints)):
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(killed.pid, signal.SIGKILL)  # the night's process and everything it started
    killed.communicate()
    [checkpoint] = (tmp_path / "work").glob(checkpoints)
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= killed_at < 120, killed_at  # mid-training: some epochs done, most to go

    resumed = _flow(args, env, cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "crashed: recorded in Prefect and MLflow" in err, err[-3000:]
    assert "trial 1 resumes the training of trial 0 (its worker died)" in err, err[-3000:]
    result = json.loads(out.splitlines()[0])
    assert result["case"] == "resume" and result["version"] == "1"
    crashed = night_runs(p["tracking_uri"], "crashed")
    assert len(crashed) == 1 and crashed[0].info.status == "FAILED"
    # The killed night's own run was closed (no second run for it); its trial, failed as its worker died, was
    # retried under the night that finished it, from the epoch it had reached, and is the registered version.
    from mlflow import MlflowClient

    client = MlflowClient(p["tracking_uri"])
    assert crashed[0].data.tags["prefect.flow_run_id"] and crashed[0].data.tags["vae.step"] == "night"
    training = client.get_run(result["run_id"])
    study_run = client.get_run(training.data.tags["mlflow.parentRunId"])
    assert study_run.data.tags["mlflow.parentRunId"] == result["night_run_id"] and training.info.status == "FINISHED"
    curve = client.get_metric_history(training.info.run_id, "val_neg_elbo")
    steps = [m.step for m in curve]
    assert steps == list(range(killed_at + 1, killed_at + 1 + len(steps))) and steps, steps[:5]  # resumed, not redone
    code = (
        "import asyncio\nfrom prefect.client.orchestration import get_client\n"
        "async def main():\n    async with get_client() as c:\n"
        "        for r in await c.read_flow_runs():\n            print('STATE', r.state.name, r.state.message)\n"
        "asyncio.run(main())"
    )
    states = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    lines = [x for x in states.stdout.splitlines() if x.startswith("STATE")]
    assert sorted(x.split()[1] for x in lines) == ["Completed", "Crashed"], states.stdout + states.stderr[-2000:]
    assert any("died without finishing" in x for x in lines)


def test_two_overlapping_runs_of_the_nightly_deployment(tmp_path, mnist5k):
    drop = tmp_path / "drop"
    write_pngs(mnist5k, drop, 0, 600)
    p = params(tmp_path, drop)
    home = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    server, url = start_server(
        ["prefect", "server", "start", "--host", "127.0.0.1"],
        health="/api/health",
        env=home,
        port_env="PREFECT_SERVER_API_PORT",
        timeout=120,
    )
    api = f"{url}/api"
    env = {**os.environ, **home, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    extra = [f"--param={k}={json.dumps(v)}" for k, v in p.items() if k not in ("trials",)]
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", "--trials", "1", "--epochs", "1", *extra],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, found = time.time() + 90, []
        while time.time() < deadline and not found:
            found = [d for d in prefect_api(api, "/deployments/filter", {}) if d["name"] == "nightly"]
            time.sleep(1)
        dep = found[0]
        assert dep["global_concurrency_limit"]["limit"] == 1, dep
        assert dep["concurrency_options"]["collision_strategy"] == "CANCEL_NEW", dep
        runs = [prefect_api(api, f"/deployments/{dep['id']}/create_flow_run", {})["id"] for _ in range(2)]
        states = {}
        deadline = time.time() + 400
        while time.time() < deadline:
            states = {r: prefect_api(api, f"/flow_runs/{r}")["state"] for r in runs}
            if all(s["type"] in ("COMPLETED", "CANCELLED", "FAILED", "CRASHED") for s in states.values()):
                break
            time.sleep(2)
        kinds = sorted(s["type"] for s in states.values())
        assert kinds == ["CANCELLED", "COMPLETED"], states
        cancelled = next(s for s in states.values() if s["type"] == "CANCELLED")
        assert cancelled["message"] == "Deployment concurrency limit reached."
    finally:
        stop_server(serve)
        stop_server(server)
