"""The registered pyfunc behind a real `mlflow models serve`: the answers equal the in-process ones, bad
requests get a 400 with a message, and registry URIs work wherever the CLI takes a MODEL."""

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import start_server, stop_server
from vae.cli import main

NAME = "vae-serving-test"
URI = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, trained):
    """A temporary SQLite store holding `trained` as version 1 of NAME, aliased champion."""
    import mlflow
    from mlflow import MlflowClient

    from vae.tracking.models import log_model
    from vae.tracking.store import using_store

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with using_store(uri):
        client = MlflowClient(uri)
        exp = client.create_experiment("serving-test", artifact_location=str(tmp / "artifacts"))
        with mlflow.start_run(experiment_id=exp) as run:
            info = log_model(trained[0], registered_model_name=NAME)
        client.set_registered_model_alias(NAME, "champion", info.registered_model_version)
    return {"uri": uri, "run_id": run.info.run_id, "tmp": tmp}


SERVE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",  # the model is code plus weights: nothing is unpickled
}


@pytest.fixture(scope="module")
def server(registry):
    """`vae serve models:/NAME@champion` on 127.0.0.1 (on another port if the first is taken before it binds),
    with the venv's bin folder NOT on PATH, as `.venv/bin/vae serve` runs from a fresh clone; SIGTERM (then
    SIGKILL) to its process group at the end, whatever happened."""
    env = {**SERVE_ENV, "MLFLOW_TRACKING_URI": registry["uri"]}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent)
    )
    proc, url = start_server(
        ["vae", "serve", URI], health="/ping", env=env, timeout=120, log=registry["tmp"] / "serve.log"
    )
    try:
        yield url
    finally:
        stop_server(proc)


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def images(mnist5k):
    return mnist5k.test.images[:8].reshape(8, 784).numpy().astype(np.float32) / 255


@pytest.mark.slow
def test_rest_answers_equal_the_in_process_answers(server, registry, images):
    import mlflow

    from vae.tracking.models import predict, resolve_model

    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    model, cfg, state = resolve_model(URI, registry["uri"])
    assert (
        mlflow.get_tracking_uri(),
        os.environ.get("MLFLOW_TRACKING_URI"),
        os.environ.get("MLFLOW_REGISTRY_URI"),
    ) == before  # mlflow's global state is left as it was
    assert state["source"]["run_id"] == registry["run_id"]
    for params, shape in (
        ({"op": "encode"}, (8, 20)),
        ({"op": "reconstruct"}, (8, 784)),
        ({"op": "score"}, (8,)),
        ({"op": "score", "kind": "recon"}, (8,)),
        ({"op": "sample", "n": 5, "seed": 3, "temperature": 0.7}, (5, 784)),
    ):
        status, body = post(server, {"inputs": images.tolist(), "params": params})
        assert status == 200, body
        got = np.asarray(body["predictions"], np.float32)
        want = predict(model, cfg, images, params)
        assert got.shape == want.shape == shape, params
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(params))
    # default op: reconstruct, pixel probabilities
    status, body = post(server, {"inputs": images.tolist()})
    assert status == 200 and np.min(body["predictions"]) >= 0 and np.max(body["predictions"]) <= 1


@pytest.mark.slow
def test_rest_answers_are_the_models_posterior_means_and_pixel_probabilities(server, trained, images):
    """Checked against the network itself, not against the predict() the server calls: the weights read
    from the checkpoint with torch, then encode = the posterior means mu, reconstruct = sigmoid(decode(mu))."""
    import torch

    from vae.config import Config
    from vae.models import build_model

    state = torch.load(Path(trained[0]) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(Config.from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(images))[0]
        probs = torch.sigmoid(model.decode(mu))
    for op, want in (("encode", mu.numpy()), ("reconstruct", probs.numpy())):
        status, body = post(server, {"inputs": images.tolist(), "params": {"op": op}})
        assert status == 200, body
        got = np.asarray(body["predictions"], np.float32)
        assert got.shape == want.shape, op
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=op)


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": [[0.5] * 100], "params": {"op": "encode"}}, "(-1, 784)"),
        ({"inputs": [["a"] * 784], "params": {"op": "encode"}}, "could not convert string to float"),
        ({"inputs": [[0.5] * 784], "params": {"op": "fly"}}, "op='fly' is invalid: expected one of reconstruct"),
        ({"inputs": [[2.0] * 784], "params": {"op": "encode"}}, "pixels must be numbers in [0, 1]"),
        ({"inputs": [[-0.1] * 784], "params": {"op": "score"}}, "pixels must be numbers in [0, 1]"),
        ({"inputs": [[0.5] * 784], "params": {"op": "sample", "n": 0}}, "n=0 is invalid"),
        ({"inputs": [[0.5] * 784], "params": {"op": "sample", "n": "many"}}, "for value `many`"),
        ({"inputs": [[0.5] * 784], "params": {"op": "score", "kind": "psnr"}}, "kind='psnr' is invalid"),
        ({"params": {"op": "encode"}}, "input fields"),
        (b"{not json", "JSON"),
        (b'{"inputs": [[NaN' + b", 0.5" * 783 + b"]]}", "pixels must be numbers in [0, 1]"),
    ],
)
def test_malformed_requests_get_400_with_a_message(server, body, message):
    status, answer = post(server, body)
    assert status == 400, answer
    assert message in answer.get("message", ""), answer
    assert "stack_trace" not in answer or message not in answer["stack_trace"]


@pytest.mark.slow
def test_the_cli_takes_registry_uris(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    monkeypatch.chdir(tmp_path)
    assert main(["sample", URI, "--n", "6", "--temperature", "0.8", "--out", "s.npy"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 28, 28)
    assert main(["encode", f"models:/{NAME}/1", "--limit", "5", "--out", "z.npy"]) == 0
    assert np.load(tmp_path / "z.npy").shape == (5, 20)
    assert main(["reconstruct", f"runs:/{registry['run_id']}/model", "--limit", "4", "--out", "r.npy"]) == 0
    capsys.readouterr()

    for ref, message in ((f"models:/{NAME}@nobody", "nobody"), ("models:/no-such-model/1", "no-such-model")):
        assert main(["sample", ref, "--out", "x.png"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vae: error: model ") and message in err and len(err.splitlines()) == 1, err
    assert main(["sample", URI, "--out", "x.png", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy", "s.npy", "z.npy"]  # no store, no x.png


@pytest.mark.slow
def test_report_is_attached_to_the_models_run(registry, trained, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    out = tmp_path / "report.html"
    assert main(["report", URI, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["logged_to"].endswith("/report")
    client = MlflowClient(registry["uri"])
    names = {a.path for a in client.list_artifacts(registry["run_id"], "report")}
    assert names == {"report/report.html", "report/report_files"}
    pngs = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(registry["run_id"], "report/report_files")}
    assert {"samples.png", "reconstructions.png", "compression.png", "denoising.png"} <= pngs
    # a run folder names its run with --run-id; an unknown run is refused before any work
    assert main(["report", str(trained[0]), "--out", str(tmp_path / "other.html"), "--run-id", "nope"]) == 2
    assert "run_id='nope' is invalid" in capsys.readouterr().err and not (tmp_path / "other.html").exists()


def test_vae_serve_serves_a_run_folder_too(trained, tmp_path):
    proc, url = start_server(
        ["vae", "serve", str(trained[0])], health="/ping", env=SERVE_ENV, timeout=120, log=tmp_path / "serve.log"
    )
    try:
        x = np.zeros((2, 784), np.float32)
        status, body = post(url, {"inputs": x.tolist(), "params": {"op": "encode"}})
        assert status == 200 and np.asarray(body["predictions"]).shape == (2, 20)
    finally:
        stop_server(proc)
