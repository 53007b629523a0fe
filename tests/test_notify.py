"""Being told (issue 24): `vae registry notify` makes a live MLflow server announce each new version and each
alias move (challenger, champion) to a receiver on 127.0.0.1, signed with the secret it was given."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import mlflow
import pytest

from tests.helpers import run_cli, start_server, stop_server, webhook_receiver

pytestmark = pytest.mark.slow
SECRET = "hook-secret-41"


@pytest.fixture
def receiver():
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def webhook_server(tmp_path):
    """A live `mlflow server` (SQLite store) that may call http receivers on 127.0.0.1, as a test needs."""
    home = tmp_path / "mlflow-server"
    home.mkdir()
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_TRACKING_URI": None,
           "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true"}  # fmt: skip
    cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", str(home / "artifacts"), "--workers", "1"]  # fmt: skip
    proc, url = start_server(cmd, health="/health", env=env, timeout=90, log=home / "server.log")
    try:
        yield url
    finally:
        stop_server(proc)


def test_a_new_version_and_each_alias_move_reach_the_receiver_signed(webhook_server, receiver, trained):
    from vae.tracking import models as serving
    from vae.tracking import registry
    from vae.tracking.store import experiment_id

    hook_url, got = receiver
    base = ["registry", "notify", "--name", "vae-notify", "--tracking-uri", webhook_server, "--json"]
    r = run_cli(*base, "--url", "ftp://nowhere", env={"VAE_HOOK_SECRET": SECRET})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "expected an http(s) URL" in r.stderr
    first = run_cli(
        *base, "--url", f"{hook_url}/old", "--secret-env", "VAE_HOOK_SECRET", env={"VAE_HOOK_SECRET": SECRET}
    )
    r = run_cli(*base, "--url", f"{hook_url}/hook", "--secret-env", "VAE_HOOK_SECRET", env={"VAE_HOOK_SECRET": SECRET})
    assert first.returncode == 0 and r.returncode == 0, first.stderr[-2000:] + r.stderr[-2000:]
    assert json.loads(r.stdout)["webhook_id"] == json.loads(first.stdout)["webhook_id"]  # moved, not a second one

    mlflow.set_tracking_uri(webhook_server)
    try:
        with mlflow.start_run(experiment_id=experiment_id("notify-test")) as run:
            info = serving.log_model(trained[0], name="model")
        metrics = {"neg_elbo": 100.0, "fingerprint": "f" * 64, "dataset": "mnist-5k", "split": "test"}
        version = registry.register(webhook_server, "vae-notify", info.model_uri, run.info.run_id, metrics,
                                    model_id=info.model_id)  # fmt: skip
        registry.promote(webhook_server, "vae-notify", version)
    finally:
        mlflow.set_tracking_uri(None)

    deadline = time.monotonic() + 60
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = {}
    for path, headers, body in got:
        assert path == "/hook"  # the updated URL only
        signed = f"{headers['X-MLflow-Delivery-Id']}.{headers['X-MLflow-Timestamp']}.{body.decode()}".encode()
        expected = "v1," + base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()).decode()
        assert hmac.compare_digest(headers["X-MLflow-Signature"], expected)
        event = json.loads(body)
        seen[event["entity"], event["action"], event["data"].get("alias")] = event["data"]
    assert set(seen) >= {
        ("model_version", "created", None),
        ("model_version_alias", "created", "challenger"),
        ("model_version_alias", "created", "champion"),
    }, seen
    champion = seen["model_version_alias", "created", "champion"]
    assert champion["name"] == "vae-notify" and str(champion["version"]) == version


def test_a_failed_night_and_a_drifted_champion_reach_the_receiver(receiver, tmp_path, monkeypatch):
    from prefect.events import emit_event
    from prefect.testing.utilities import prefect_test_harness

    from flows.notify import ensure_automations, main
    from flows.pipeline import vae_pipeline

    hook_url, got = receiver
    assert main(["--url", "mailto:someone"]) == 2
    monkeypatch.chdir(tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        first = ensure_automations(f"{hook_url}/old", allow_private=True)
        assert ensure_automations(f"{hook_url}/hook", allow_private=True) == first  # updated, not added
        failed = vae_pipeline(trials=0, workdir=str(tmp_path / "w"), return_state=True)  # refused: trials=0
        assert failed.is_failed()
        emit_event("vae.champion.drifted", resource={"prefect.resource.id": "vae.model.vae-x",
                                                     "prefect.resource.name": "vae-x"})  # fmt: skip
        deadline = time.monotonic() + 60
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    texts = sorted(json.loads(body)["text"] for path, _, body in got if path == "/hook")
    assert len(got) == 2 and texts[0].startswith("vae: failed: ") and "prefect.flow-run.Failed" in texts[0], got
    assert texts[1].startswith("vae: the champion drifted from its record: vae-x (vae.champion.drifted"), got
