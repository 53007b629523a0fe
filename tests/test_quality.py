"""Sample quality (vae/quality.py): the Frechet distance and class entropy on known inputs, and sample_fid on
real models: it must tell a model trained for 1 epoch from one trained for 20, with its classifier cached."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae import quality

ROOT = Path(__file__).resolve().parents[1]


def test_frechet_distance_of_known_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.arange(16.0) / 10
    # the same covariance, the means apart: the squared distance of the means, nothing else
    assert quality.frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    # twice the spread: S and 4S give tr(S + 4S - 2 * 2S) = tr(S)
    centred = a - a.mean(0)
    assert quality.frechet_distance(centred, 2 * centred) == pytest.approx(
        float(torch.cov(a.T.double()).trace()), rel=1e-6
    )
    assert quality.frechet_distance(a, a[torch.randperm(4000, generator=g)]) == pytest.approx(0.0, abs=1e-6)


def test_class_entropy_is_log_k_for_even_classes_and_0_for_one():
    assert quality.class_entropy(torch.arange(10).repeat(50), 10) == pytest.approx(math.log(10))
    assert quality.class_entropy(torch.full((500,), 3), 10) == pytest.approx(0.0)
    assert 0 < quality.class_entropy(torch.tensor([0, 0, 0, 1]), 10) < math.log(2)


@pytest.mark.slow
def test_sample_fid_puts_a_1_epoch_model_behind_a_20_epoch_one(tmp_path, mnist5k):
    from vae.config import Config
    from vae.training import fit

    data_dir = tmp_path / "data"
    models = {}
    for epochs in (1, 20):
        cfg = Config().replace(train={"epochs": epochs, "progress": False}, data={"data_dir": str(data_dir)})
        fit(cfg, out=tmp_path / f"e{epochs}", data=mnist5k)
        models[epochs] = tmp_path / f"e{epochs}" / "checkpoint.pt"
    from vae.checkpoint import load_model

    scores = {e: quality.sample_quality(load_model(p)[0], mnist5k, data_dir) for e, p in models.items()}
    early, late = scores[1], scores[20]
    assert early["classifier_accuracy"] == late["classifier_accuracy"] > 0.93  # one classifier, trained once
    assert late["sample_fid_floor"] < late["sample_fid"] < early["sample_fid"], (early, late)
    assert early["sample_fid"] > 1.5 * late["sample_fid"]  # not a near tie
    assert late["sample_class_entropy"] > early["sample_class_entropy"]  # more of the ten digits, more evenly
    assert late["sample_class_entropy"] <= late["sample_class_entropy_max"] == pytest.approx(math.log(10))
    # The classifier is cached by fingerprint and reused, not trained again; a damaged entry is replaced.
    [cached] = (data_dir / "classifiers").glob("*.pt")
    assert cached.name == f"{mnist5k.fingerprint[:32]}.pt"
    stamp = cached.stat().st_mtime_ns
    assert quality.classifier_for(mnist5k, data_dir)[1] == late["classifier_accuracy"]
    assert cached.stat().st_mtime_ns == stamp
    cached.write_bytes(b"not a checkpoint")
    assert quality.classifier_for(mnist5k, data_dir)[1] == late["classifier_accuracy"]  # retrained: same seed
    assert cached.stat().st_mtime_ns != stamp
    # `vae evaluate --json` reports them (the cached classifier: no training in the command)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae",
            "evaluate",
            str(models[20]),
            "--data-dir",
            str(data_dir),
            "--json",
            "--no-figures",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["sample_fid"] == pytest.approx(late["sample_fid"], rel=1e-4)
    assert out["classifier_accuracy"] == late["classifier_accuracy"] and out["sample_count"] == 10_000
    assert "training the digit classifier" not in r.stderr
