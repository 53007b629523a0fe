"""A pipeline night as one tree of MLflow runs, in the registered model's experiment:

    night-<time>-<case>              one top-level run per night (tags nightly.case/reason, pipeline.json)
    ├── <study>                      the night's study run (figures, trials.csv), `vae tune --parent-run-id`
    │   └── trial-0, trial-1, ...    each trial's live run (state tag: complete, pruned, fail); the winner's
    │                                logged model (its best epoch) is what the registry's version points at
    ├── train-<candidate key>        only where the winner's checkpoint is not on this machine: its config
    │                                trained again, `vae train --parent-run-id`
    └── evaluate-<candidate key>     the test metrics, linked to that logged model (model_id) and to the test
                                     split (a dataset input)

A night that registers nothing (no new candidate, a failure, a crash) is the same top-level run with fewer
children. The flow creates the run when the night starts; the hooks that record a failed night find it again
by its Prefect flow run id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import LoggedModelInput, Metric, RunTag

from vae.tracking.live import adopt
from vae.tracking.runs import PARENT_TAG, dataset_input, source_tags
from vae.tracking.store import configure, experiment_id, open_client, tag_value

STEP = "night"
FLOW_RUN_TAG = "prefect.flow_run_id"


def start_night(uri: str | None, name: str, tags: Mapping[str, str]) -> str:
    """The night's top-level run, RUNNING until end_night; returns its id."""
    client = open_client(configure(uri))
    all_tags = {**source_tags(), "vae.step": STEP, **{k: tag_value(v) for k, v in tags.items()}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return client.create_run(experiment_id(name, client), run_name=f"night-{stamp}", tags=all_tags).info.run_id


def find_night(uri: str | None, name: str, flow_run_id: str) -> str | None:
    """The night run that the Prefect flow run `flow_run_id` opened, if it got that far."""
    client = open_client(configure(uri))
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id], f"tags.`vae.step` = '{STEP}' and tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'", max_results=1
    )
    return found[0].info.run_id if found else None


def end_night(
    uri: str | None, run_id: str, tags: Mapping[str, str], record: Mapping[str, Any], failed: bool = False
) -> None:
    """Close the night: its case and reason as tags (and in its name), `record` as pipeline.json. A failed
    night also closes what it left RUNNING under it (a study run, a trial, a training run: a later night
    that resumes the training reopens that run and takes it under its own night)."""
    client = open_client(configure(uri))
    run = client.get_run(run_id)
    client.log_batch(run_id, tags=[RunTag(k, tag_value(v)) for k, v in tags.items()])
    client.log_dict(run_id, dict(record), "pipeline.json")
    case = tags.get("nightly.case")
    name = run.info.run_name
    if case and not name.endswith(f"-{case}"):
        client.update_run(run_id, name=f"{name}-{case}")
    if failed:
        for child in _open_descendants(client, run.info.experiment_id, run_id):
            client.set_tag(child, "error", "its night failed or died while this run was open")
            client.set_terminated(child, "FAILED")
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def _open_descendants(client, experiment: str, run_id: str, depth: int = 2) -> list[str]:
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{run_id}'")
    found = [c.info.run_id for c in children if c.info.status == "RUNNING"]
    if depth > 1:
        for c in children:
            found += _open_descendants(client, experiment, c.info.run_id, depth - 1)
    return found


def log_evaluation(
    uri: str | None,
    night_id: str,
    trained: Mapping[str, Any],
    metrics: Mapping[str, Any],
    figures: Mapping[str, str] = (),
) -> str:
    """The evaluation run under the night: the test split as its dataset input, the model it scored as its
    model input, and the test metrics logged against that model (model_id) and that data set, so the model's
    page lists them. On the candidate's own run, the gain over the seed recipe on the same test images (and the
    recipe's score), linked to the model too. A training run that is not a trial (a fallback retraining, resumed
    or cached) is taken under this night. Returns the run's id."""
    client = open_client(configure(uri))
    train_run = client.get_run(trained["mlflow_run_id"])
    if train_run.data.tags.get("vae.step") != "trial":  # a trial's run stays under its study run
        adopt(client, train_run.info.run_id, night_id)
    key = trained["candidate_key"]
    tags = {
        **source_tags(),
        "vae.step": "evaluate",
        PARENT_TAG: night_id,
        "model_id": trained["model_id"],
        "training_run_id": train_run.info.run_id,
        "dataset": str(metrics["dataset"]),
        "fingerprint": str(metrics["fingerprint"]),
    }
    run_id = client.create_run(train_run.info.experiment_id, run_name=f"evaluate-{key}", tags=tags).info.run_id
    test = dataset_input(
        {
            "dataset": metrics["dataset"],
            "fingerprint": metrics["fingerprint"],
            "source": metrics.get("source", metrics["dataset"]),
            "splits": {"test": {"size": metrics.get("images")}},
        },
        "evaluation",
    )
    client.log_inputs(run_id, datasets=[test], models=[LoggedModelInput(trained["model_id"])])
    ts = int(time.time() * 1000)
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    linked = dict(model_id=trained["model_id"], dataset_name=test.dataset.name, dataset_digest=test.dataset.digest)
    client.log_batch(run_id, metrics=[Metric(f"test_{k}", float(v), ts, 0, **linked) for k, v in numbers.items()])
    against = {k: numbers[k] for k in ("gain_over_recipe", "recipe_neg_elbo") if k in numbers}
    if against:
        on_candidate = [Metric(f"test_{k}", float(v), ts, 0, **linked) for k, v in against.items()]
        client.log_batch(train_run.info.run_id, metrics=on_candidate)
    for path in dict(figures).values():
        client.log_artifact(run_id, path, "figures")
    client.set_terminated(run_id, "FINISHED")
    client.set_tag(train_run.info.run_id, "evaluation_run_id", run_id)
    return run_id
