"""What the project's MLflow runs share: MLflow's context tags, nested configs as params, a data set as a
dataset input, the parent-run tag, and the tags that say a tuning trial's state."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking.context.registry import resolve_tags

PARENT_TAG = "mlflow.parentRunId"  # how MLflow's UI nests a run under another
STATE_TAG = "state"  # complete | pruned | fail | running: MLflow's run status has no "pruned"
STUDY_KEY_TAG = "vae.study_key"
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "FAILED"}


def source_tags() -> dict[str, str]:
    """MLflow's own context tags for a run created through the client (the fluent API adds them itself):
    mlflow.source.name/type, mlflow.user, and mlflow.source.git.commit when the code runs from a checkout."""
    return dict(_source_tags())


@functools.cache
def _source_tags() -> dict[str, str]:  # one git lookup per process, not one per trial
    return {k: str(v) for k, v in resolve_tags().items()}


def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}: nested configs as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dataset_input(info: Mapping[str, Any], context: str) -> DatasetInput:
    """A data set as an MLflow dataset input: name, where it came from, digest = the project's fingerprint
    (first 36 characters, the width MLflow stores; the whole one is the `fingerprint` tag), split sizes."""
    source = str(info.get("source", ""))
    if source.startswith(("idx:", "folder:")):  # a data set named by its folder: the folder is the source
        source = source.split(":", 1)[1]
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore")
        local = source.startswith("/")
        src = resolve_dataset_source(source) if local else CodeDatasetSource({"mlflow.source.name": source})
    entity = MetaDataset(src, name=str(info["dataset"]), digest=str(info["fingerprint"])[:36])._to_mlflow_entity()
    sizes = {f"{k}_images": str(v["size"]) for k, v in info.get("splits", {}).items()}
    tags = {"mlflow.data.context": context, "fingerprint": str(info["fingerprint"]), **sizes}
    return DatasetInput(entity, tags=[InputTag(k, v) for k, v in tags.items()])
