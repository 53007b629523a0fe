"""Which data set a registered model belongs to: its name, and the tag that refuses unrelated data.

A built-in data set is its own name. A folder (idx:PATH, folder:PATH) is its absolute path: the same folder is
one data set however its content changes night to night (new images are new data of the same set: a new
study, warm-started from the last one), while two folders are two data sets even when both are called `data`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vae.errors import ConfigError

SOURCE_TAG = "source"  # on the registered model: the data set its versions were trained on (data_source())


def data_source(dataset: str) -> str:
    """What a data set is, as a registry sees it: the name of a built-in one, or idx:/folder: with the folder's
    absolute path. A folder is one data set however its content grows night to night; two folders are two."""
    if dataset.startswith(("idx:", "folder:")):
        kind, path = dataset.split(":", 1)
        return f"{kind}:{Path(path).expanduser().resolve()}"
    return dataset


def model_name(dataset: str) -> str:
    """vae-mnist-5k, vae-fashion-mnist; vae-idx-<folder name>-<8 hex of its absolute path> (and vae-folder-...):
    idx:/a/data and idx:/b/data are unrelated data sets, so their models, champions and studies are apart."""
    if dataset.startswith(("idx:", "folder:")):
        source = data_source(dataset)
        kind, path = source.split(":", 1)
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        dataset = f"{kind}-{Path(path).name or 'root'}-{digest}"
    return "vae-" + re.sub(r"[^A-Za-z0-9._-]+", "-", dataset).strip("-")


def check_source(tracking_uri: str | None, name: str, dataset: str) -> None:
    """ConfigError if registered model `name` holds versions of another data set than `dataset` (its
    SOURCE_TAG): a champion, its config and its studies would carry over to unrelated data."""
    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        held = client.get_registered_model(name).tags.get(SOURCE_TAG)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # no such model yet
        raise
    if held is not None and held != data_source(dataset):
        raise ConfigError(
            f"registered model {name!r} holds models of {held}, not of {data_source(dataset)}: unrelated data sets "
            "must not share a champion or warm-start each other; give this data set another --model-name "
            "(or leave it out: the default name differs per folder), or pass --switch-data to move the model to it"
        )
