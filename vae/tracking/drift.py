"""Is the champion still as good as its record says? The weekly re-evaluation scores it on today's test split;
this compares that with the number it was registered with, and says whether it drifted.

Today's score is a mean over the test images; its 95% interval comes from a bootstrap of the per-image -ELBO
(vae/comparison.py's paired_gain, against zero: the interval of a mean). The champion has drifted when its
recorded test -ELBO lies outside that interval AND the two differ by more than the gate's min_improvement: the
same two conditions on which the gate would call a challenger different from it. The numbers are logged on the
champion's run as reeval_* metrics linked to its logged model and to today's data set (MLflow 3's model page
shows them), and as the version's tag `reevaluated`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import torch
from mlflow.entities import LoggedModelInput, Metric
from mlflow.entities.model_registry import ModelVersion

from vae.comparison import paired_gain
from vae.io import utc_stamp
from vae.tracking.registry import METRIC
from vae.tracking.runs import dataset_input
from vae.tracking.store import open_client


def drift(per_image: torch.Tensor, recorded: float, threshold: float) -> dict[str, Any]:
    """Today's mean -ELBO with its interval, against `recorded`; drifted as the module says. change > 0: worse."""
    iv = paired_gain(per_image, torch.zeros_like(per_image))
    change = iv.mean - recorded
    outside = not iv.low <= recorded <= iv.high
    return {
        "recorded": recorded,
        "today": iv.mean,
        "low": iv.low,
        "high": iv.high,
        "change": change,
        "threshold": threshold,
        "images": iv.images,
        "drifted": outside and abs(change) > threshold,
    }


def recorded_value(version: ModelVersion) -> float:
    """The test -ELBO the version was registered with (its tag test_neg_elbo)."""
    return float(version.tags[METRIC])


def log_reevaluation(uri: str, name: str, version: ModelVersion, metrics: Mapping[str, Any], found: dict) -> None:
    """reeval_* metrics (today's numbers and the drift) on the champion's run, linked to its logged model and to
    today's data set; the data set as an input of that run; the `reevaluated` tag on the version."""
    client = open_client(uri)
    data = dataset_input(
        {"dataset": metrics["dataset"], "fingerprint": metrics["fingerprint"], "source": metrics.get("source", ""),
         "splits": {"test": {"size": metrics.get("images")}}},
        "reevaluation",
    )  # fmt: skip
    model_id = getattr(version, "model_id", None) or _logged_model_id(version.source)
    client.log_inputs(version.run_id, datasets=[data], models=[LoggedModelInput(model_id)] if model_id else None)
    ts, step = int(time.time() * 1000), int(time.time())
    linked = dict(model_id=model_id, dataset_name=data.dataset.name, dataset_digest=data.dataset.digest)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numbers |= {"drift": found["change"], "drifted": float(found["drifted"])}
    client.log_batch(version.run_id, metrics=[Metric(f"reeval_{k}", float(v), ts, step, **linked) for k, v in
                                              numbers.items()])  # fmt: skip
    tag = {"time": utc_stamp(), "neg_elbo": metrics["neg_elbo"], "fingerprint": metrics["fingerprint"], **found}
    client.set_model_version_tag(name, str(version.version), "reevaluated", json.dumps(tag))


def _logged_model_id(source: str | None) -> str | None:
    """m-... of a version whose source is models:/m-... (a SQL store leaves the version's model_id empty)."""
    tail = (source or "").rsplit("/", 1)[-1]
    return tail if (source or "").startswith("models:/") and tail.startswith("m-") else None
