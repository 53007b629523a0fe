"""The gate's statistics and the comparison a reviewer reads, on real models and real digits (no MLflow)."""

import json
import math

import pytest
import torch

from vae.checkpoint import load_model
from vae.comparison import (
    comparison_figures,
    comparison_markdown,
    model_card,
    paired_gain,
    write_comparison,
)
from vae.evaluation import elbo_metrics, per_image_neg_elbo
from vae.models import build_model
from vae.tracking.registry import decide


@pytest.fixture(scope="module")
def models(trained, mnist5k):
    """(trained model, an untrained one of the same shape, cfg, test images)."""
    model, cfg, _ = load_model(trained[1].checkpoint)
    torch.manual_seed(0)
    fresh = build_model(cfg.model).eval()
    return model, fresh, cfg, mnist5k.test.images


def test_per_image_scores_average_to_the_reported_neg_elbo(models):
    model, _, cfg, images = models
    scores = per_image_neg_elbo(model, images, cfg, batch_size=128)
    assert scores.shape == (images.shape[0],)
    assert scores.mean().item() == pytest.approx(elbo_metrics(model, images, cfg, batch_size=128)["neg_elbo"], rel=1e-6)


def test_a_clear_gain_promotes(models):
    model, fresh, cfg, images = models
    iv = paired_gain(per_image_neg_elbo(fresh, images, cfg), per_image_neg_elbo(model, images, cfg))
    assert iv.images == images.shape[0] and iv.low < iv.mean < iv.high
    assert iv.low > 100  # 4 epochs of training against none: hundreds of nats per image
    d = decide("2", 100.0, "1", 100.0 + iv.mean, 0.5, interval=iv.as_dict())
    assert d.promote and "interval [" in d.reason and "clear of 0.5" in d.reason, d.reason
    # the same gain with a margin above it is refused, and the interval is in the reason
    d = decide("2", 100.0, "1", 100.0 + iv.mean, iv.high + 1, interval=iv.as_dict())
    assert not d.promote and "does not beat" in d.reason and "interval [" in d.reason, d.reason


def test_identical_models_are_refused_even_with_no_margin(models):
    model, _, cfg, images = models
    a, b = per_image_neg_elbo(model, images, cfg), per_image_neg_elbo(model, images, cfg)
    iv = paired_gain(a, b)  # common random numbers: the estimator's noise cancels exactly
    assert (iv.mean, iv.low, iv.high) == (0.0, 0.0, 0.0)
    d = decide("2", a.mean().item(), "1", b.mean().item(), 0.0, interval=iv.as_dict())
    assert not d.promote, d.reason


def test_a_gain_inside_the_noise_is_refused(models):
    """The same model scored with independent noise (no common random numbers): any gain is pure noise.
    A seed whose mean gain is above the margin (0) must still be refused: its interval reaches 0."""
    model, _, cfg, images = models
    champion = per_image_neg_elbo(model, images, cfg, seed=0)
    for seed in range(1, 30):
        candidate = per_image_neg_elbo(model, images, cfg, seed=seed)
        if champion.mean() > candidate.mean():
            break
    else:
        pytest.fail("no seed gave a positive noise gain")
    iv = paired_gain(champion, candidate)
    assert iv.mean > 0 and iv.low < 0 < iv.high, iv
    d = decide("2", candidate.mean().item(), "1", champion.mean().item(), 0.0, interval=iv.as_dict())
    assert not d.promote and "inside the noise" in d.reason and f"[{iv.low:.3f}, {iv.high:.3f}] nats" in d.reason
    # without the interval, the old rule alone would have promoted it
    assert decide("2", candidate.mean().item(), "1", champion.mean().item(), 0.0).promote
    # common random numbers shrink the interval: the independent-noise one is far wider than the CRN one
    crn = paired_gain(champion, per_image_neg_elbo(model, images, cfg, seed=0) + 1e-3)
    assert crn.high - crn.low < (iv.high - iv.low) / 10


def test_the_interval_must_clear_the_margin_strictly():
    iv = {"mean": 1.0, "low": 0.5, "high": 1.5, "confidence": 0.95, "images": 500}
    assert not decide("2", 99.0, "1", 100.0, 0.5, interval=iv).promote  # low == min_improvement: not clear
    assert decide("2", 99.0, "1", 100.0, 0.5, interval={**iv, "low": 0.5000001}).promote
    assert decide("2", 99.0, None, None, 0.5, interval=None).promote  # the first version: as before
    assert decide("2", 101.0, "1", 100.0, 0.5, force=True, interval=iv).promote  # force: as before


def test_paired_gain_is_repeatable_and_checks_its_input():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, generator=g) + 1.0, torch.randn(300, generator=g)
    assert paired_gain(a, b) == paired_gain(a, b)
    iv = paired_gain(a, b)
    se = (a - b).std().item() / 300**0.5  # the bootstrap interval is close to the normal one
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    with pytest.raises(ValueError, match="same images"):
        paired_gain(a, b[:10])


def test_the_comparison_shows_both_models_or_says_there_is_no_champion(models, tmp_path):
    model, fresh, cfg, images = models
    paths = comparison_figures(tmp_path / "both", ("challenger v2", model), ("champion v1", fresh), images)
    from PIL import Image

    both = Image.open(paths["reconstructions"]).size
    alone = comparison_figures(tmp_path / "alone", ("challenger v1", model), None, images)
    assert Image.open(alone["reconstructions"]).size[1] < both[1]  # two rows of images, not three
    assert Image.open(paths["samples"]).size[1] > Image.open(alone["samples"]).size[1]

    cand = elbo_metrics(model, images, cfg) | {"active_units": 5, "images": 500}
    champ = elbo_metrics(fresh, images, cfg) | {"active_units": 20, "images": 500}
    decision = decide("2", cand["neg_elbo"], "1", champ["neg_elbo"], 0.5).as_dict()
    write_comparison(tmp_path / "both", "vae-test v2", [("challenger v2", cand), ("champion v1", champ)], decision)
    md = (tmp_path / "both" / "comparison.md").read_text()
    assert (
        "| metric | challenger v2 | champion v1 |" in md
        and f"| {cand['neg_elbo']:.3f} | {champ['neg_elbo']:.3f} |" in md
    )
    assert "| active units | 5 | 20 |" in md and "IW-NLL" not in md  # no IW-NLL measured: no row
    assert "**Decision:** promoted to champion" in md
    record = json.loads((tmp_path / "both" / "comparison.json").read_text())
    assert record["models"]["champion v1"]["kl"] == pytest.approx(champ["kl"]) and record["decision"]["promote"]
    alone_md = comparison_markdown(
        "vae-test v1", [("challenger v1", cand)], decide("1", 1.0, None, None, 0.5).as_dict()
    )
    assert "no champion yet" in alone_md and "| metric | challenger v1 |" in alone_md


def test_the_model_card_names_data_config_epochs_metrics_decision_and_commit(trained):
    result = trained[1]
    _, cfg, _ = load_model(result.checkpoint)
    metrics = {"neg_elbo": 120.5, "iw_nll": 115.25, "dataset": "mnist-5k", "fingerprint": "ab" * 32, "images": 500}
    d = decide(
        "3", 120.5, "2", 122.0, 0.5, interval={"mean": 1.5, "low": 1.1, "high": 1.9, "confidence": 0.95, "images": 500}
    )
    trained_facts = {"config": cfg.to_dict(), "best_epoch": 3, "epochs_run": 4, "stopped_early": False}
    card = model_card(
        {
            "name": "vae-test",
            "version": "3",
            "run_id": "r1",
            "decision": {**d.as_dict(), "approval": {"decision": "approve", "reviewer": "ada", "time": "t"}},
            "metrics": metrics,
            "trained": trained_facts,
            "git_commit": "0123abc",
        }
    )
    for part in (
        "`mnist-5k`",
        "ab" * 32,
        "4 epochs run of 4",
        "best epoch 3",
        "`0123abc`",
        "| IW-NLL (nats/image) | 115.250 |",
    ):
        assert part in card, part
    assert "promoted to champion: beats champion v2" in card and "approve by ada" in card
    assert json.dumps(cfg.to_dict(), indent=2, sort_keys=True) in card


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_score_is_never_promoted_not_even_as_the_first_version_or_by_hand(value):
    for champion, force in [(None, False), ("1", False), (None, True)]:
        d = decide("2", value, champion, 100.0 if champion else None, 0.0, force=force)
        assert not d.promote and "non-finite score is never promoted" in d.reason
