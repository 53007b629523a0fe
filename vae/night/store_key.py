"""Which MLflow store a night's cached steps belong to (flows/policies.py): the steps' results name runs and
logged models of that store, so a result cached against a store since wiped (mlruns/ deleted, a new server
database) must not be reused, or register would look for runs that no longer exist."""

from __future__ import annotations

from vae.night.params import PipelineParams
from vae.tracking.store import configure, open_client


def store_key(p: PipelineParams) -> str:
    """The model's experiment in the night's store, by id and creation time ("none" before it exists): a wiped
    or replaced store makes the experiment again, with another creation time (and often the same id)."""
    exp = open_client(configure(p.resolved_tracking_uri())).get_experiment_by_name(p.registered_name)
    return "none" if exp is None else f"{exp.experiment_id}@{exp.creation_time}"
