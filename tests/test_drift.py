"""The weekly re-evaluation compares the champion with its own record (issue 24): on the data it was registered
on it has not drifted; on digits it never saw (the same real digits, inverted: white on black turned black on
white) it has, the numbers are on its run linked to its logged model, and a Prefect event says so."""

from __future__ import annotations

import json
import time

import httpx
import mlflow
import pytest
import torch
from mlflow import MlflowClient

from vae.tracking.drift import drift


def test_a_mean_inside_its_interval_or_within_the_threshold_is_no_drift():
    scores = torch.linspace(80, 120, 500)  # mean 100, interval about +-1
    assert drift(scores, 100.0, 0.5)["drifted"] is False
    assert drift(scores, 99.3, 0.5)["drifted"] is False  # 0.7 nats off, but inside the interval: noise, not drift
    far = drift(scores, 90.0, 0.5)
    assert far["drifted"] is True and far["change"] == pytest.approx(10.0) and far["low"] < 100 < far["high"]
    assert drift(scores, 90.0, 20.0)["drifted"] is False  # beyond the interval, not beyond the gate's threshold


@pytest.fixture(scope="module")
def champion(tmp_path_factory, trained):
    """A registered champion whose record is its real test -ELBO on mnist-5k, in a SQLite store."""
    from vae.checkpoint import load_model
    from vae.config import DataConfig
    from vae.data import load
    from vae.evaluation import evaluate_model
    from vae.tracking import models as serving
    from vae.tracking import registry
    from vae.tracking.store import experiment_id

    tmp = tmp_path_factory.mktemp("drift")
    uri = f"sqlite:///{tmp}/mlflow.db"
    model, cfg, _ = load_model(trained[0] / "checkpoint.pt")
    cfg = cfg.replace(data={"dataset": "mnist-5k", "subset": None})
    metrics = evaluate_model(model, cfg, load(DataConfig()))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id("drift-test")) as run:
        info = serving.log_model(trained[0], name="model")
    version = registry.register(uri, "vae-drift", info.model_uri, run.info.run_id, metrics, model_id=info.model_id)
    registry.promote(uri, "vae-drift", version)
    mlflow.set_tracking_uri(None)
    return uri, metrics, info.model_id, tmp


def inverted_idx(folder, mnist5k):
    from vae.idx import write_idx

    folder.mkdir()
    for prefix, split in (("train", mnist5k.train), ("t10k", mnist5k.test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", 255 - split.images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", split.labels)
    return folder


def drift_events(api: str) -> list[dict]:
    r = httpx.post(f"{api}/events/filter", json={"filter": {"event": {"prefix": ["vae.champion"]}}}, timeout=30)
    r.raise_for_status()
    return r.json()["events"]


@pytest.mark.slow
def test_the_champion_is_compared_with_its_record_and_a_drift_raises_an_event(champion, mnist5k, tmp_path):
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.reevaluate import DRIFTED, reevaluate_champion

    uri, metrics, model_id, _ = champion
    with prefect_test_harness(server_startup_timeout=120):
        same = reevaluate_champion(dataset="mnist-5k", tracking_uri=uri, model_name="vae-drift", iw_samples=0)
        assert same["drift"]["drifted"] is False and abs(same["drift"]["change"]) < 1e-3, same["drift"]
        assert same["drift"]["recorded"] == pytest.approx(metrics["neg_elbo"], abs=1e-5)

        folder = inverted_idx(tmp_path / "inverted", mnist5k)
        shifted = reevaluate_champion(dataset=f"idx:{folder}", tracking_uri=uri, model_name="vae-drift", iw_samples=0)
        found = shifted["drift"]
        assert found["drifted"] is True and found["change"] > 50 and found["low"] > found["recorded"], found
        api = PREFECT_API_URL.value()
        deadline = time.monotonic() + 30
        while not (events := drift_events(api)) and time.monotonic() < deadline:
            time.sleep(1)
        [event] = events
        assert event["event"] == DRIFTED and event["resource"]["prefect.resource.id"] == "vae.model.vae-drift"
        assert event["payload"]["version"] == "1" and event["payload"]["change"] == pytest.approx(found["change"])

    client = MlflowClient(uri, uri)
    tag = json.loads(client.get_model_version("vae-drift", "1").tags["reevaluated"])
    assert tag["drifted"] is True and tag["fingerprint"] == shifted["fingerprint"]
    # today's numbers are linked to the champion's logged model and to the data set they were measured on
    linked = [m for m in client.get_logged_model(model_id).metrics if m.key == "reeval_neg_elbo"]
    assert sorted(m.value for m in linked) == pytest.approx(sorted([same["neg_elbo"], shifted["neg_elbo"]]))
    assert len({m.dataset_digest for m in linked}) == 2
