"""`vae train --tracking-uri`: an MLflow run written while training runs (params, per-epoch metrics, system
metrics, the data set as an input), continued on --resume, and closed KILLED on SIGTERM. Real SQLite store."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.helpers import run_cli

pytestmark = pytest.mark.slow
FAST_SYSTEM_METRICS = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}


def runs(uri: str, experiment: str = "vae-train"):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_tracked_run_logs_each_epoch_as_it_ends_and_a_resume_continues_it(tmp_path):
    uri, out = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run"
    args = ["train", "--subset", "500", "--tracking-uri", uri, "--out", out, "--no-progress"]
    r = run_cli(*args, "--epochs", "2", env={**FAST_SYSTEM_METRICS, "VAE_LOG_IMAGES_EVERY": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    client, [run] = runs(uri)
    # the grids of each epoch, with the epoch as their step: the run page's image slider
    images = {}
    for a in client.list_artifacts(run.info.run_id, "images"):
        key, _, step, *_ = Path(a.path).name.split("+")
        if a.path.endswith(".png"):
            images[key, int(step)] = np.asarray(Image.open(client.download_artifacts(run.info.run_id, a.path)))
    assert sorted(images) == [("reconstructions", 1), ("reconstructions", 2), ("samples", 1), ("samples", 2)]
    assert images["samples", 1].shape == (242, 242) and images["reconstructions", 2].shape == (62, 242)
    assert not np.array_equal(images["samples", 1], images["samples", 2])  # the same draws, a model that learnt
    assert np.array_equal(images["reconstructions", 1][:31], images["reconstructions", 2][:31])  # same originals
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_neg_elbo")
    assert [m.step for m in history] == [1, 2]
    assert history[0].timestamp < history[1].timestamp  # logged when each epoch ended, not all at the end
    assert any(k.startswith("system/cpu") for k in run.data.metrics)  # system metrics beside the curves
    [data] = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in data.tags}
    assert data.dataset.name == "mnist-5k" and tags["fingerprint"].startswith(data.dataset.digest)
    assert tags["train_images"] == "500" and tags["mlflow.data.context"] == "training"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.json", "figures"}
    assert run.data.tags["best_epoch"] in ("1", "2") and run.data.tags["mlflow.source.name"]
    # the best epoch is the run's logged model (MLflow 3: the model's page links back to this run)
    model = client.get_logged_model(run.data.tags["model_id"])
    assert model.source_run_id == run.info.run_id and model.name == "model"

    # The same MLflow run goes on, and moves under the parent it is resumed with (the pipeline's next night).
    night = client.create_run(run.info.experiment_id, run_name="night").info.run_id
    r = run_cli(*args, "--epochs", "3", "--resume", "--parent-run-id", night)
    assert r.returncode == 0, r.stderr[-2000:]
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["mlflow.parentRunId"] == night
    assert len(client.search_runs([run.info.experiment_id])) == 2  # the night and the one training run
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_neg_elbo")] == [1, 2, 3]
    steps = {a.path.split("+")[2] for a in client.list_artifacts(run.info.run_id, "images")}
    assert steps == {"1", "2"}  # the default is every 5 epochs: none for epoch 3


def test_sigterm_leaves_a_killed_run_with_what_it_had(tmp_path):
    uri, out = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vae",
        "train",
        "--subset",
        "1000",
        "--epochs",
        "200",
        "--tracking-uri",
        uri,
        "--out",
        str(out),
        "--no-progress",
    ]
    # MLflow's own switch turns the system-metrics sampler off (tracking_overhead.py measures with and without)
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", **FAST_SYSTEM_METRICS}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while True:  # at least one epoch is in the run (logged after its checkpoint is written)
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        if (out / "mlflow_run.json").exists():
            run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
            if MlflowClient(uri).get_metric_history(run_id, "val_neg_elbo"):
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "vae: interrupted (train)" in err, err[-2000:]
    client, [run] = runs(uri)
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "val_neg_elbo")) >= 1
    assert not [k for k in run.data.metrics if k.startswith("system/")]


def _epochs(out) -> int:
    """The last epoch training.py recorded in the run folder's history (0 before the first)."""
    from vae import checkpoint as ckpt

    try:
        return int(ckpt.load(out)["epoch"])
    except Exception:  # not written yet, or being replaced this instant
        return 0


def _wait(what, timeout: float, proc) -> None:
    deadline = time.time() + timeout
    while not what():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_training_goes_on_through_a_tracking_outage_and_every_epoch_reaches_the_server(tmp_path):
    """The live server stops answering (SIGSTOP), then dies (SIGKILL) and is started again on its port: the
    training is not held up by either, and the run gets all its epochs, in order, once the server is back."""
    from tests.helpers import start_server, stop_server

    serve = ["mlflow", "server", "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    serve += ["--artifacts-destination", str(tmp_path / "artifacts")]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server, url = start_server(serve, "/health", env=env, log=tmp_path / "server.log")
    out, epochs = tmp_path / "run", 80
    cmd = [sys.executable, "-m", "vae", "train", "--epochs", str(epochs), "--tracking-uri", url, "--out", str(out)]
    quiet = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    train = subprocess.Popen(
        [*cmd, "--no-progress", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet
    )
    try:
        _wait(lambda: _epochs(out) >= 2, 300, train)
        os.killpg(server.pid, signal.SIGSTOP)  # the server stops answering
        stopped = _epochs(out)
        _wait(lambda: _epochs(out) >= stopped + 3, 120, train)  # training goes on without it
        assert (out / "undelivered_metrics.json").exists()  # what it could not send is kept, on disk
        os.killpg(server.pid, signal.SIGCONT)
        os.killpg(server.pid, signal.SIGKILL)  # then it dies
        server.wait()
        died = _epochs(out)
        _wait(lambda: _epochs(out) >= died + 3, 120, train)
        assert _epochs(out) < epochs, "the training ended before the server came back: give it more epochs"
        port = url.rsplit(":", 1)[1]
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), *serve[1:], "--host", "127.0.0.1", "--port", port],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stdout, stderr = train.communicate(timeout=600)
        assert train.returncode == 0, stderr[-2000:]
        run_id = json.loads(stdout.strip().splitlines()[-1])["mlflow_run_id"]
        client = MlflowClient(url)
        assert [m.step for m in client.get_metric_history(run_id, "val_neg_elbo")] == list(range(1, epochs + 1))
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not (out / "undelivered_metrics.json").exists()
    finally:
        train.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGCONT)
        stop_server(server)
