"""Where MLflow runs go: the tracking URI, clients, experiments, and pointing mlflow at a store for a while.

Default store: `sqlite:///<cwd>/mlruns/mlflow.db` with artifacts under `<cwd>/mlruns/artifacts/<experiment>`.
Any tracking URI works, a remote `mlflow server` included. Nothing happens at import: folders are made and
the URI is set only when a function is called.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from vae.errors import CheckpointError
from vae.stores import default_tracking_uri, file_lock, sqlite_path

# The longest value a store accepts: this mlflow takes 8000 characters in a run tag and 6000 in a param; 5000
# keeps a tag (a registered version's too) within what older MLflow servers take.
TAG_LIMIT, PARAM_LIMIT = 5000, 6000


def tag_value(value: Any, limit: int = TAG_LIMIT) -> str:
    """`value` as an MLflow tag value: a string, cut to `limit` characters."""
    return str(value)[:limit]


def param_value(value: Any) -> str:
    return tag_value(value, PARAM_LIMIT)


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the project's default local store."""
    return explicit or default_tracking_uri()


def configure(uri: str | None) -> str:
    """The URI to use (`uri`, or the default), its folder made for a local store. mlflow's global URI is left
    alone: code that needs the fluent API wraps it in using_store(uri), so that one long-lived process (a
    served deployment) can run flows against different stores one after the other."""
    uri = tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in worker logs
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def check_store(uri: str) -> None:
    """CheckpointError for a sqlite store that does not exist (mlflow would silently create an empty one)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise CheckpointError(
            f"tracking store {uri} does not exist: set MLFLOW_TRACKING_URI or pass "
            "--tracking-uri to the store holding the model"
        )


def _first_contact(uri: str):
    """A lock for the first contact with a fresh SQLite store: two processes that open it at the same moment
    would both run its schema migrations."""
    db = sqlite_path(uri)
    return file_lock(db.with_suffix(".lock")) if db is not None else nullcontext()


def open_client(uri: str | None = None) -> MlflowClient:
    """An MlflowClient for `uri` (default: the project's default store), tracking and registry alike."""
    uri = tracking_uri(uri)
    with _first_contact(uri):
        return MlflowClient(uri, registry_uri=uri)


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    """Id of experiment `name`, created if missing. With a local SQLite store its artifacts go beside the
    database, in artifacts/<name>, not in MLflow's cwd-relative ./mlruns; with a server, where it decides."""
    client = client or open_client()
    db = sqlite_path(client.tracking_uri)
    with _first_contact(client.tracking_uri):  # names are unique: create once
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if db is not None:
            location = (db.resolve().parent / "artifacts" / re.sub(r"[^\w.-]", "_", name)).as_uri()
        return client.create_experiment(name, artifact_location=location)


@contextmanager
def using_store(uri: str) -> Iterator[None]:
    """Point mlflow's global tracking and registry URIs at `uri` for a while, then restore them exactly
    (globals and environment variables). Needed because mlflow 3.17 resolves models:/NAME URIs against the
    global registry URI whatever registry_uri download_artifacts is given (a TODO in its
    ModelsArtifactRepository), and mlflow.set_tracking_uri(previous) would pin `previous` into the
    environment instead of restoring an unset URI."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri, [os.environ.get(n) for n in names])
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for name, value in zip(names, saved[2]):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
