"""The Prefect pipeline end to end on a tiny budget, under a real (temporary) Prefect server, with real
SQLite stores for MLflow and Optuna; a live `mlflow server` and a live `prefect server` where the issue
asks for one."""

import contextlib
import json
import os
import stat
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.helpers import prefect_api, start_server, stop_server, webhook_receiver
from vae.errors import ConfigError
from vae.records import Baseline, NightResult, problems

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny(tmp_path, **kw):
    params = dict(
        dataset="mnist-5k",
        subset=300,
        trials=2,
        min_epochs=1,
        epochs=2,
        iw_samples=10,
        # not ./mlflow.db of the working directory (mlflow's own default there): code that falls back on
        # mlflow's global URI instead of this one fails
        tracking_uri=f"sqlite:///{tmp_path}/store/mlflow.db",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        workdir=str(tmp_path / "work"),
        model_name="vae-test",
        min_improvement=0.5,
    )
    params.update(kw)
    return params


def task_states(flow_state):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
            )
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}

    import asyncio

    return asyncio.run(read())


def run_json(client, run_id: str, name: str, tmp_path) -> dict:
    """A JSON artifact of an MLflow run, downloaded through the tracking store."""
    dst = tmp_path / "artifacts" / run_id
    dst.mkdir(parents=True, exist_ok=True)
    return json.loads(Path(client.download_artifacts(run_id, name, str(dst))).read_text())


def runs_under(client, run_id: str) -> list:
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")


def night_tree(client, night_id: str) -> dict[str, list]:
    """The runs under a night's run by their `vae.step` (tune, train, evaluate), after checking that the night
    is a top-level run and the only one of its flow run."""
    night = client.get_run(night_id)
    assert night.data.tags["vae.step"] == "night" and "mlflow.parentRunId" not in night.data.tags
    tree: dict[str, list] = {}
    for run in runs_under(client, night_id):
        tree.setdefault(run.data.tags["vae.step"], []).append(run)
    return tree


def top_level(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]


def assert_registered_tree(client, night_id: str, reg: dict, trials: int) -> None:
    """Everything that produced a registered version hangs under a night: the study run with `trials` trial runs
    of this night, and the evaluation. The version's run is the winning trial's own run (the candidate is the
    trial as it was trained, not a retraining), under the study run of the night that ran it, holding the model
    and the per-epoch curves."""
    tree = night_tree(client, night_id)
    assert sorted(tree) == ["evaluate", "tune"] and all(len(v) == 1 for v in tree.values()), tree
    [study], [evaluation] = tree["tune"], tree["evaluate"]
    trial_runs = runs_under(client, study.info.run_id)
    assert len(trial_runs) == trials and all(t.data.tags["vae.step"] == "trial" for t in trial_runs)
    assert all(t.data.tags["state"] in ("complete", "pruned", "fail") for t in trial_runs)
    training = client.get_run(reg["run_id"])
    assert training.info.run_id == client.get_model_version("vae-test", reg["version"]).run_id
    assert training.data.tags["vae.step"] == "trial" and training.data.tags["vae.candidate"] == "true"
    assert client.get_run(training.data.tags["mlflow.parentRunId"]).data.tags["vae.step"] == "tune"
    assert evaluation.info.run_id == reg["evaluation_run_id"] and training.info.status == "FINISHED"
    curve = client.get_metric_history(training.info.run_id, "val_neg_elbo")
    assert [m.step for m in curve] == list(range(1, int(training.data.tags["epochs_trained"]) + 1))
    logged = client.get_logged_model(reg["model_id"])
    assert logged.source_run_id == training.info.run_id  # the model is the winning trial's own
    contexts = [
        {t.key: t.value for t in d.tags}["mlflow.data.context"]
        for run in (training, evaluation)
        for d in client.get_run(run.info.run_id).inputs.dataset_inputs
    ]
    assert contexts == ["training", "evaluation"]


def summary_artifact(flow_state) -> str:
    """The markdown of the `vae-pipeline-summary` artifact that this flow run created, from Prefect's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["vae-pipeline-summary"])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
            )

    import asyncio

    found = asyncio.run(read())
    assert len(found) == 1 and found[0].type == "markdown", found
    return found[0].data


def idx_folder(folder: Path) -> Path:
    """An idx: data set from mnist-5k: its first 600 training images, and as test split 200 images of its
    validation split (so another test set than mnist-5k's)."""
    import numpy as np

    from vae.config import DataConfig
    from vae.data import load

    d = load(DataConfig())
    folder.mkdir(parents=True)

    def write(name, array, dims):
        header = bytes([0, 0, 8, len(dims)]) + b"".join(int(n).to_bytes(4, "big") for n in dims)
        (folder / name).write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())

    for prefix, split, n in (("train", d.train, 600), ("t10k", d.val, 200)):
        write(f"{prefix}-images-idx3-ubyte", split.images[:n].numpy(), (n, 28, 28))
        write(f"{prefix}-labels-idx1-ubyte", split.labels[:n].numpy(), (n,))
    return folder


def test_bad_parameters_fail_before_any_work(tmp_path):
    import subprocess
    import sys

    for args, message in (
        (["--trials", "0"], "trials=0 is invalid"),
        (["--dataset", "cifar"], "dataset='cifar'"),
        (["--min-improvement", "-1"], "min_improvement=-1.0 is invalid"),
        (["--require-approval"], "require_approval needs a Prefect server"),  # no PREFECT_API_URL here
    ):
        r = subprocess.run(
            [sys.executable, "-m", "flows.pipeline", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            },
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_version_registered_by_a_night_that_died_before_deciding_is_judged_by_the_next(
    harness, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    params = tiny(tmp_path)
    monkeypatch.setenv("VAE_PIPELINE_FAIL_AFTER", "register")  # registered, then the night dies: nothing decided
    assert vae_pipeline(**params, return_state=True).is_failed()
    monkeypatch.delenv("VAE_PIPELINE_FAIL_AFTER")
    client = MlflowClient(params["tracking_uri"], params["tracking_uri"])
    [left] = client.search_model_versions("name='vae-test'")
    assert "promotion.decision" not in left.tags and "champion" not in client.get_registered_model("vae-test").aliases

    result = vae_pipeline(**params)
    reg, decision = result["registered"], result["decision"]
    assert reg["version"] == "1" and reg["resumed"] and not reg["duplicate"]  # found again, and judged
    assert decision["promote"] and decision["reason"] == "no champion yet: the first version is promoted"
    [judged] = client.search_model_versions("name='vae-test'")  # no second version of the same candidate
    assert judged.tags["promotion.decision"] == "promoted"
    assert {k: str(v) for k, v in client.get_registered_model("vae-test").aliases.items()} == {
        "champion": "1",
        "challenger": "1",
    }
    assert client.get_run(reg["run_id"]).data.tags["promotion.decision"] == "promoted"


def test_pipeline_registers_promotes_and_reuses_finished_work(harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    params = tiny(tmp_path)

    monkeypatch.setenv("VAE_PIPELINE_FAIL_AFTER", "candidate")
    failed = vae_pipeline(**params, return_state=True)
    assert failed.is_failed()
    monkeypatch.delenv("VAE_PIPELINE_FAIL_AFTER")

    state = vae_pipeline(**params, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert problems(NightResult, result) == []  # each record the night passed has the keys vae/records.py declares
    [kept] = (Path(params["workdir"]) / "baselines").glob("*.json")
    assert problems(Baseline, json.loads(kept.read_text())) == []
    states = task_states(state)
    # the failed night's candidate is finished, not searched again: no new trial, its training reused
    assert result["night"]["case"] == "resume" and result["study"]["trials"] == 2, result["night"]
    assert states["candidate"] == "Cached", states
    assert states["evaluate"] == "Completed" and states["register"] == "Completed"
    metrics = result["metrics"]
    # the cached results are stored as JSON records, not pickles (the other files hold failed nights' exceptions)
    results = Path(os.environ["PREFECT_HOME"]) / "storage"
    assert stat.S_IMODE(results.stat().st_mode) == 0o700  # the records hold store URLs: no other user reads them
    files = [f.read_bytes() for f in results.iterdir()]
    stored = [json.loads(b) for b in files if b.startswith(b"{")]
    assert {r["metadata"]["serializer"]["type"] for r in stored} == {"json"}
    values = [v for v in (json.loads(r["result"]) for r in stored) if isinstance(v, dict)]
    assert any(v.get("neg_elbo") == metrics["neg_elbo"] for v in values) and any("candidate_key" in v for v in values)

    reg, decision, metrics = result["registered"], result["decision"], result["metrics"]
    assert reg["version"] == "1" and decision["promote"]  # the first version becomes champion
    client = MlflowClient(params["tracking_uri"], params["tracking_uri"])
    model = client.get_registered_model("vae-test")
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1", "challenger": "1"}
    run = client.get_run(reg["run_id"])
    assert run.data.tags["promotion.decision"] == "promoted"
    evaluation = client.get_run(reg["evaluation_run_id"])
    assert evaluation.data.metrics["test_neg_elbo"] == pytest.approx(metrics["neg_elbo"])
    for run_id in (reg["run_id"], reg["evaluation_run_id"]):  # validation figures; test figures
        artifacts = {a.path for a in client.list_artifacts(run_id, "figures")}
        assert {"figures/samples.png", "figures/reconstructions.png", "figures/loss_curves.png"} <= artifacts
    assert metrics["fingerprint"] == result["study"]["fingerprint"]

    # One run per night at the top of the experiment. The failed night holds its study run and trials, the
    # winner among them; the night that finished its work holds the study run it ran (no new trial) and the
    # evaluation of that winner.
    nights = top_level(client, "vae-test")
    [failed_id] = [r.info.run_id for r in nights if r.info.run_id != result["night_run_id"]]
    assert len(nights) == 2 and reg["night_run_id"] == result["night_run_id"]
    failed_night = client.get_run(failed_id)
    assert failed_night.info.status == "FAILED" and failed_night.data.tags["nightly.case"] == "failed"
    [failed_study] = night_tree(client, failed_id)["tune"]
    assert sorted(r.info.run_name for r in runs_under(client, failed_study.info.run_id)) == ["trial-0", "trial-1"]
    assert_registered_tree(client, result["night_run_id"], reg, trials=0)
    assert run.data.tags["mlflow.parentRunId"] == failed_study.info.run_id
    assert client.get_run(result["night_run_id"]).info.run_name.endswith("-resume")

    # What the run leaves: pipeline.json, promotion.json on the MLflow run, the Prefect summary artifact.
    # The registered model is the best epoch of the training (best.pt), and the run says which it was.
    history = Path(result["study"]["best_checkpoint"]).parent / "history.json"
    assert client.get_run(reg["run_id"]).data.tags["best_epoch"] == str(json.loads(history.read_text())["best_epoch"])
    assert metrics["fingerprint"] and json.loads(history.read_text())["best_checkpoint"].endswith("best.pt")
    # The test metrics are on the logged model too (MLflow 3's model page), the test split a dataset input.
    logged = client.get_logged_model(reg["model_uri"].rsplit("/", 1)[-1])
    assert {m.key: m.value for m in logged.metrics}["test_neg_elbo"] == pytest.approx(metrics["neg_elbo"], abs=1e-6)
    assert {m.key: m.dataset_digest for m in logged.metrics}["test_neg_elbo"] == metrics["fingerprint"][:36]
    [evaluation] = [
        d
        for d in client.get_run(reg["evaluation_run_id"]).inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "evaluation"
    ]
    assert metrics["fingerprint"].startswith(evaluation.dataset.digest)
    pipeline_json = run_json(client, result["night_run_id"], "pipeline.json", tmp_path)  # the night's record
    assert pipeline_json["params"] == result["params"] and params.items() <= result["params"].items()
    assert pipeline_json["metrics"] == metrics and pipeline_json["study"] == result["study"]
    promotion = run_json(client, reg["run_id"], "promotion.json", tmp_path)
    assert promotion == {
        **decision,
        "promote": True,
        "candidate": "1",
        "champion": None,
        "champion_value": None,
        "improvement": None,
        "min_improvement": 0.5,
        "forced": False,
        "metric": "test_neg_elbo",
        "interval": None,
        "approval": None,
    }
    assert promotion["candidate_value"] == pytest.approx(metrics["neg_elbo"], abs=1e-6)
    # The comparison artifact says there is no champion and shows the candidate alone; the model card is
    # the version's description.
    shown = {a.path for a in client.list_artifacts(reg["run_id"], "comparison")}
    files = ("comparison.md", "comparison.json", "reconstructions.png", "samples.png")
    assert shown == {f"comparison/{f}" for f in files}
    comparison = run_json(client, reg["run_id"], "comparison/comparison.json", tmp_path)
    recipe_label = f"seed recipe (trial {result['study']['recipe']['trial']})"
    assert list(comparison["models"]) == ["challenger v1", recipe_label] and comparison["decision"]["promote"]
    assert comparison["models"][recipe_label]["neg_elbo"] == pytest.approx(metrics["recipe_neg_elbo"])
    assert comparison["models"]["challenger v1"]["neg_elbo"] == metrics["neg_elbo"]
    card = client.get_model_version("vae-test", "1").description
    for part in (metrics["fingerprint"], "`mnist-5k`", f"best epoch {json.loads(history.read_text())['best_epoch']}"):
        assert part in card, (part, card)
    assert "promoted to champion: no champion yet" in card and '"subset": 300' in card and "Git commit:** `" in card
    summary = summary_artifact(state)
    assert "# vae-test v1" in summary and reg["run_id"] in summary and "promoted to champion" in summary
    assert f"| test -ELBO (nats/image) | {metrics['neg_elbo']:.3f} |" in summary

    # The same inputs again: a night is a case, not a replay. Two more trials of the same study; a new
    # version only if they found a better configuration, never a copy of v1.
    second = vae_pipeline(**params)
    assert problems(NightResult, second) == []  # quiet or not, the same record
    assert second["study"]["study"] == result["study"]["study"] and second["study"]["trials"] == 4
    assert len(top_level(client, "vae-test")) == 3  # one more night, one more top-level run
    [second_study] = night_tree(client, second["night_run_id"])["tune"]  # its own study run: this night's trials
    assert sorted(r.info.run_name for r in runs_under(client, second_study.info.run_id)) == ["trial-2", "trial-3"]
    assert second_study.data.tags["optuna.study"] == result["study"]["study"]
    # Which case it must be, from the study itself: better iff one of this night's trials beats v1's trial
    import optuna

    done = optuna.load_study(study_name=result["study"]["study"], storage=params["storage"]).trials
    values = {t.number: t.value for t in done if t.state == optuna.trial.TrialState.COMPLETE}
    better = any(v < values[result["study"]["best_trial"]] for n, v in values.items() if n >= 2)
    assert second["night"]["case"] == ("same-data-better" if better else "same-data-no-better"), (values, second)
    if not better:
        assert second["registered"] is None and second["record"]["champion"] == "1"
        assert sorted(night_tree(client, second["night_run_id"])) == ["tune"]  # a quiet night: no training
        assert [str(v.version) for v in client.search_model_versions("name='vae-test'")] == ["1"]
    else:
        assert second["registered"]["version"] == "2"
        assert second["study"]["best_trial"] != result["study"]["best_trial"]

    # New data (another test split, so another fingerprint): the champion, scored on mnist-5k, cannot be
    # compared by its tag; the pipeline scores it again on this run's test split and the gate uses that.
    champion_version = "2" if second["registered"] and second["decision"]["promote"] else "1"
    champion_run = client.get_model_version("vae-test", champion_version)
    from vae.tracking.models import resolve_model

    champion, cfg, _ = resolve_model("models:/vae-test@champion", params["tracking_uri"])  # before night 3
    folder = idx_folder(tmp_path / "idx-new")
    night3 = tiny(tmp_path, dataset=f"idx:{folder}", study="vae-test-idx", trials=1, iw_samples=0)
    with pytest.raises(ConfigError, match=r"'vae-test' holds models of mnist-5k, not of idx:/.*idx-new"):
        vae_pipeline(**night3)  # other data under the same name: refused unless the move is asked for
    third = vae_pipeline(**night3, switch_data=True)
    assert client.get_registered_model("vae-test").tags["source"] == f"idx:{folder.resolve()}"
    assert third["metrics"]["fingerprint"] != metrics["fingerprint"]
    from vae.config import DataConfig
    from vae.data import load
    from vae.evaluation import elbo_metrics

    rescored = elbo_metrics(champion, load(DataConfig(dataset=f"idx:{folder}", subset=300)).test.images, cfg)[
        "neg_elbo"
    ]
    stored = float(champion_run.tags["test_neg_elbo"])
    assert abs(rescored - stored) > 0.01  # the two splits score differently: the check below can tell them apart
    assert third["night"]["case"] == "new-data", third["night"]
    promotion = run_json(client, third["registered"]["run_id"], "promotion.json", tmp_path)
    assert promotion["champion"] == champion_version and promotion["candidate"] == third["registered"]["version"]
    assert promotion["champion_value"] == pytest.approx(rescored, rel=1e-6)
    assert promotion["improvement"] == pytest.approx(rescored - third["metrics"]["neg_elbo"], abs=1e-5)
    # The gate's paired test: the champion and the candidate on the same test images, with the interval
    gain = promotion["interval"]
    assert gain["images"] == third["metrics"]["images"] and gain["low"] <= gain["mean"] <= gain["high"]
    assert gain["mean"] == pytest.approx(promotion["improvement"], abs=1e-3)
    # The gate's answer from scores computed here: the candidate scored on the same split as the champion
    candidate, ccfg, _ = resolve_model(f"models:/vae-test/{third['registered']['version']}", params["tracking_uri"])
    images = load(DataConfig(dataset=f"idx:{folder}", subset=300)).test.images
    gained = rescored - elbo_metrics(candidate, images, ccfg)["neg_elbo"]
    assert promotion["improvement"] == pytest.approx(gained, abs=1e-5)
    assert promotion["promote"] == (gained > 0.5 and gain["low"] > 0.5) == third["decision"]["promote"]
    assert f"[{gain['low']:.3f}, {gain['high']:.3f}] nats" in promotion["reason"]
    comparison = run_json(client, third["registered"]["run_id"], "comparison/comparison.json", tmp_path)
    label = f"champion v{champion_version}"
    assert list(comparison["models"])[:2] == [f"challenger v{third['registered']['version']}", label]
    assert list(comparison["models"])[2].startswith("seed recipe (trial ")
    assert comparison["models"][label]["neg_elbo"] == pytest.approx(rescored, rel=1e-6)
    assert {"recon", "kl", "active_units"} <= comparison["models"][label].keys()
    assert comparison["decision"]["interval"] == gain
    card = client.get_model_version("vae-test", third["registered"]["version"]).description
    assert third["metrics"]["fingerprint"] in card and promotion["reason"] in card
    tags = client.get_model_version("vae-test", third["registered"]["version"]).tags
    assert tags["promotion.compared_to"] == champion_version and float(tags["promotion.improvement"]) == pytest.approx(
        promotion["improvement"], abs=1e-5
    )
    # Prefect's table of the model's nights: one row per night that ended (not the failed or refused ones)
    from flows.artifacts import previous_rows

    rows = previous_rows("nights-vae-test")[-3:]  # the module's Prefect server: earlier tests' nights come first
    assert [r["case"] for r in rows] == [night["night"]["case"] for night in (result, second, third)]
    assert rows[0]["registered"] == "v1" and rows[0]["promoted"] is True and rows[0]["champion"] == "v1"
    assert (
        rows[2]["registered"] == f"v{third['registered']['version']}" and rows[2]["mlflow_run"] == third["night_run_id"]
    )
    assert rows[2]["test_neg_elbo"] == pytest.approx(third["metrics"]["neg_elbo"])


def test_a_search_that_finds_nothing_better_registers_the_recipe_not_a_worse_model(harness, tmp_path, monkeypatch):
    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.toml"  # every drawn trial learns at a hundredth of the recipe's rate
    space.write_text("lr = 1e-5\nbatch_size = 128\nlatent = 20\nhidden_width = 400\nmodel = 'vae'\n")
    result = vae_pipeline(**tiny(tmp_path, trials=3, space=str(space), pruner="none"))
    study, metrics = result["study"], result["metrics"]
    assert study["counts"]["complete"] == 3 and study["recipe"]["trial"] == 0
    assert study["best_trial"] == 0, study  # the recipe, which the study always holds, wins
    assert metrics["gain_over_recipe"] == 0.0 and metrics["recipe_neg_elbo"] == metrics["neg_elbo"]
    assert result["registered"]["version"] == "1" and result["decision"]["promote"]
    from mlflow import MlflowClient

    client = MlflowClient(result["params"]["tracking_uri"])
    run = client.get_run(result["registered"]["run_id"])
    assert run.info.run_name == "trial-0" and run.data.tags["vae.candidate"] == "true"
    assert run.data.metrics["test_gain_over_recipe"] == 0.0  # on the candidate's own run, linked to its model


def test_the_same_sampler_seed_gives_the_same_night(harness, tmp_path, monkeypatch):
    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    nights = []
    for name in ("a", "b"):  # two machines' worth of fresh stores, the same command
        folder = tmp_path / name
        folder.mkdir()
        nights.append(vae_pipeline(**tiny(folder, trials=5, startup_trials=2, sampler_seed=7)))
    import optuna

    a, b = nights
    trials = [
        [
            (t.number, t.state.name, t.params, t.value, t.intermediate_values)
            for t in optuna.load_study(study_name=n["study"]["study"], storage=tiny(tmp_path / f)["storage"]).trials
        ]
        for n, f in ((a, "a"), (b, "b"))
    ]
    assert trials[0] == trials[1], trials  # the same points drawn, the same pruning, the same values
    assert len({json.dumps(t[2], sort_keys=True) for t in trials[0]}) == 5  # five distinct points, not one
    assert a["study"]["best_params"] == b["study"]["best_params"]
    assert (
        a["metrics"]["neg_elbo"] == b["metrics"]["neg_elbo"]
        and a["metrics"]["sample_fid"] == b["metrics"]["sample_fid"]
    )


def test_pipeline_against_a_live_mlflow_server(harness, tmp_path, monkeypatch):
    from flows.pipeline import vae_pipeline

    monkeypatch.chdir(tmp_path)
    proc, url = start_server(
        [
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/srv.db",
            "--artifacts-destination",
            str(tmp_path / "srv-artifacts"),
            "--workers",
            "1",
        ],
        health="/health",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        before = (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri())
        result = vae_pipeline(**tiny(tmp_path, tracking_uri=url, trials=1))
        # the run's store stays the run's: the next flow in this process (a served deployment) is not pointed at it
        assert (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()) == before
        assert result["decision"]["promote"]
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/alias?name=vae-test&alias=champion") as r:
            version = json.load(r)["model_version"]
        assert version["version"] == "1"
        tags = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert tags["promotion.decision"] == "promoted"
        assert float(tags["test_neg_elbo"]) == pytest.approx(result["metrics"]["neg_elbo"], abs=1e-4)
        # The night's run tree, read back through the server: one top-level run, everything under it.
        from mlflow import MlflowClient

        client = MlflowClient(url, url)
        assert [r.info.run_id for r in top_level(client, "vae-test")] == [result["night_run_id"]]
        assert_registered_tree(client, result["night_run_id"], result["registered"], trials=1)
        assert version["run_id"] == result["registered"]["run_id"]
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A live `prefect server` on 127.0.0.1 for the tests of this module that need one: (API URL, the
    environment a process needs to use it)."""
    port_env = {
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
    }
    server, url = start_server(
        ["prefect", "server", "start", "--host", "127.0.0.1"],
        health="/api/health",
        env=port_env,
        port_env="PREFECT_SERVER_API_PORT",
        timeout=120,
    )
    try:
        yield f"{url}/api", {**os.environ, **port_env, "PREFECT_API_URL": f"{url}/api"}
    finally:
        stop_server(server)


def test_deployments_with_cron_schedules_register_on_a_live_prefect_server(prefect_server):

    api, env = prefect_server
    serve = serve_deployments(env, "--cron", "15 3 * * *", "--trials", "2")
    try:
        deadline = __import__("time").time() + 90
        found = {}
        while __import__("time").time() < deadline and len(found) < 2:
            req = urllib.request.Request(
                f"{api}/deployments/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req) as r:
                found = {d["name"]: d for d in json.load(r)}
            __import__("time").sleep(1)
        assert set(found) == {"nightly", "weekly"}, found
        crons = [s["schedule"]["cron"] for s in found["nightly"]["schedules"]]
        assert crons == ["15 3 * * *"]
        assert found["nightly"]["parameters"]["trials"] == 2
        assert [s["schedule"]["cron"] for s in found["weekly"]["schedules"]] == ["0 4 * * 0"]
    finally:
        stop_server(serve)


def serve_deployments(env: dict, *args: str, cwd=None, log=None):
    """`python -m flows.deploy ARGS`, serving the deployments from a process group of its own."""
    import subprocess
    import sys

    out = subprocess.DEVNULL if log is None else log
    return subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", *args],
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def nightly_deployment(api: str, model_name: str, timeout: float = 90) -> dict:
    """The served `nightly` deployment whose parameters name `model_name`, once the server has it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in prefect_api(api, "/deployments/filter", {}):
            if d["name"] == "nightly" and d["parameters"].get("model_name") == model_name:
                return d
        time.sleep(1)
    raise TimeoutError(f"no nightly deployment of {model_name} within {timeout} s")


def test_on_overlap_enqueue_makes_a_second_night_wait_for_the_slot_then_run(prefect_server):
    """`flows.deploy --on-overlap enqueue`: the server keeps a second run of `nightly` waiting while one holds
    the deployment's slot, and lets it start once that run ends. The states are proposed as a worker or
    runner proposes them, so no night has to run (the default, cancel, is test_nightly's overlapping runs)."""
    api, env = prefect_server
    serve = serve_deployments(env, "--on-overlap", "enqueue", "--param", 'model_name="vae-enqueue"')
    try:
        dep = nightly_deployment(api, "vae-enqueue")
    finally:
        stop_server(serve)  # the deployment and its limit stay on the server; nothing picks the runs up
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE", dep
    first, second = (prefect_api(api, f"/deployments/{dep['id']}/create_flow_run", {})["id"] for _ in range(2))

    def propose(run: str, kind: str) -> dict:
        return prefect_api(api, f"/flow_runs/{run}/set_state", {"state": {"type": kind}})

    assert propose(first, "PENDING")["status"] == "ACCEPT"
    waiting = propose(second, "PENDING")
    assert waiting["status"] == "REJECT", waiting
    assert (waiting["state"]["type"], waiting["state"]["name"]) == ("SCHEDULED", "AwaitingConcurrencySlot"), waiting
    assert propose(first, "RUNNING")["status"] == "ACCEPT"
    assert propose(second, "PENDING")["status"] == "REJECT"  # still waiting while the first runs
    assert propose(first, "COMPLETED")["status"] == "ACCEPT"
    assert propose(second, "PENDING")["status"] == "ACCEPT", "the slot was not handed on"
    ended = propose(second, "CANCELLED")  # and give the slot back: the module's later tests serve `nightly` again
    assert ended["status"] == "ACCEPT", ended


def paused_run(api: str, proc, timeout: float = 420) -> str:
    """The id of the flow run that is paused on the server, once there is one."""
    import time

    deadline = time.time() + timeout
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).encode()
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        req = urllib.request.Request(
            f"{api}/flow_runs/filter", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req) as r:
            runs = json.load(r)
        if runs:
            return runs[0]["id"]
        time.sleep(1)
    raise TimeoutError(f"no paused flow run within {timeout} s")


def test_require_approval_pauses_before_champion_moves_and_records_the_sign_off(prefect_server, tmp_path):
    import subprocess
    import sys

    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.notify import ensure_automations

    api, env = prefect_server
    params = tiny(tmp_path, trials=1, epochs=1, iw_samples=0)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in params.items()] + ["--require-approval"]
    hooks = contextlib.ExitStack()
    hook_url, told = hooks.enter_context(webhook_receiver())
    with temporary_settings({PREFECT_API_URL: api}):
        ensure_automations(hook_url, allow_private=True)  # a reviewer is told the night waits (flows/notify.py)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        flow_run = paused_run(api, proc)
        deadline = time.monotonic() + 60
        while not told and time.monotonic() < deadline:
            time.sleep(0.5)
        [(_, _, body)] = told
        assert json.loads(body)["text"].startswith("vae: a night waits for a reviewer"), body
        hooks.close()
        # Paused: the version is registered and its comparison is on its run for the reviewer; no champion yet
        uri = params["tracking_uri"]
        client = MlflowClient(uri, uri)
        assert {k: str(v) for k, v in client.get_registered_model("vae-test").aliases.items()} == {"challenger": "1"}
        run_id = client.get_model_version("vae-test", "1").run_id
        waiting = run_json(client, run_id, "comparison/comparison.json", tmp_path)["decision"]
        assert waiting["awaiting"] and waiting["promote"]
        answer = {"decision": "approve", "reviewer": "ada", "comment": "samples look like digits"}
        signed = subprocess.run(  # the README's command: flows/signoff.py answers through the Prefect client
            [sys.executable, "-m", "flows.signoff", "approve", "--reviewer", "ada", "--comment", answer["comment"]],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert signed.returncode == 0 and flow_run in signed.stdout, signed.stderr[-3000:]
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            stop_server(proc)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["promoted"] is True
    assert {k: str(v) for k, v in client.get_registered_model("vae-test").aliases.items()} == {
        "challenger": "1",
        "champion": "1",
    }
    version = client.get_model_version("vae-test", "1")
    assert {k: version.tags[f"approval.{k}"] for k in answer} == answer
    promotion = run_json(client, run_id, "promotion.json", tmp_path)
    assert promotion["promote"] and {k: promotion["approval"][k] for k in answer} == answer
    assert "Sign-off:** approve by ada" in version.description
    assert "**Sign-off:** approve by ada: samples look like digits" in (
        Path(client.download_artifacts(run_id, "comparison/comparison.md", str(tmp_path))).read_text()
    )


def test_a_sign_off_nobody_gives_times_out_and_leaves_the_champion_and_the_lock(prefect_server, tmp_path):
    import subprocess
    import sys

    from mlflow import MlflowClient

    api, env = prefect_server
    params = tiny(tmp_path, trials=1, epochs=1, iw_samples=0)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in params.items()] + ["--require-approval", "--approval-timeout=3"]
    r = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", *args],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("vae-pipeline: error: no sign-off for vae-test v1"), r.stderr[-3000:]
    assert "vae registry promote --name vae-test --version 1" in last
    uri = params["tracking_uri"]
    client = MlflowClient(uri, uri)
    assert {k: str(v) for k, v in client.get_registered_model("vae-test").aliases.items()} == {"challenger": "1"}
    assert "promotion.decision" not in client.get_model_version("vae-test", "1").tags  # no decision recorded
    from flows.nights import LOCK

    assert (tmp_path / "work").is_dir() and not (tmp_path / "work" / LOCK).exists()  # the next night may run
    assert_failure_recorded(api, client, "vae-test", "failed", "no sign-off for vae-test v1")


def assert_failure_recorded(api: str, client, model: str, case: str, reason: str) -> None:
    """The one night of `model` ended `case` (failed, crashed), and says so in both places: its MLflow night run
    (FAILED, named night-...-<case>, tagged with the case, the reason and its flow run), and in Prefect, whose
    flow run is in that state with the `vae-night-failure` artifact giving the reason."""
    from flows.nights import FAILURE_KEY

    exp = client.get_experiment_by_name(model)
    [night] = client.search_runs([exp.experiment_id], "tags.`vae.step` = 'night'")
    tags = night.data.tags
    assert night.info.status == "FAILED" and night.info.run_name.endswith(f"-{case}"), night.info
    assert night.info.run_name.startswith("night-") and tags["nightly.case"] == case, tags
    assert reason in tags["nightly.reason"], tags["nightly.reason"]
    flow_run = tags["prefect.flow_run_id"]
    assert prefect_api(api, f"/flow_runs/{flow_run}")["state"]["type"] == case.upper()
    found = prefect_api(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run]}}})
    [artifact] = [a for a in found if a["key"] == FAILURE_KEY]
    assert artifact["data"].startswith(f"# Night {case}") and reason in artifact["data"], artifact["data"]


def test_a_served_night_whose_process_is_killed_is_recorded_crashed_by_the_runners_hook(prefect_server, tmp_path):
    """The runner of `flows.deploy` sees the flow run's process die (SIGKILL while it holds at a stage boundary),
    marks the run Crashed and runs the on_crashed hook in its own process: the night run, the artifact and the
    freed lock come from that hook, since the killed process could write nothing."""
    import signal

    from mlflow import MlflowClient

    from flows.nights import LOCK

    api, env = prefect_server
    params = tiny(tmp_path, trials=1, epochs=1, iw_samples=0, model_name="vae-crashed")
    held = tmp_path / "night.held"
    hold = {"VAE_PIPELINE_HOLD_AT": "fetch", "VAE_PIPELINE_HOLD_FILE": str(held), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    served = open(tmp_path / "serve.log", "wb")
    env = {**env, **hold, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    serve = serve_deployments(
        env, *[f"--param={k}={json.dumps(v)}" for k, v in params.items()], cwd=tmp_path, log=served
    )
    try:
        dep = nightly_deployment(api, "vae-crashed")
        flow_run = prefect_api(api, f"/deployments/{dep['id']}/create_flow_run", {})["id"]
        deadline = time.time() + 300
        while not held.exists():
            state = prefect_api(api, f"/flow_runs/{flow_run}")["state"]
            assert time.time() < deadline and state["type"] != "CANCELLED", ("never reached the end of fetch", state)
            time.sleep(0.5)
        assert json.loads((tmp_path / "work" / LOCK).read_text())["flow_run_id"] == flow_run
        os.kill(int(held.read_text()), signal.SIGKILL)
        uri, deadline = params["tracking_uri"], time.time() + 120
        while True:  # the hook frees the lock first, then writes the records: wait for all of it
            try:
                assert_failure_recorded(api, MlflowClient(uri, uri), "vae-crashed", "crashed", "status code: -9")
                break
            except (AssertionError, ValueError, KeyError, AttributeError) as e:
                if time.time() > deadline:
                    state = prefect_api(api, f"/flow_runs/{flow_run}")["state"]
                    log = (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
                    raise AssertionError((repr(e)[:1000], state, log)) from e
                time.sleep(1)
        assert not (tmp_path / "work" / LOCK).exists()
    finally:
        stop_server(serve)
        served.close()


def test_a_served_sign_off_suspends_and_frees_the_night_while_the_next_night_runs(prefect_server, tmp_path):
    """A deployed night with require_approval is suspended, not paused: its process ends and the night lock and
    the deployment's slot are free, so the next night runs, and leaves the waiting version alone. The answer,
    given while that next night holds the slot, is cancelled by the deployment's limit (on-overlap cancel) and
    rescheduled when that night ends; the resumed run then only decides: v1 becomes champion with the answer."""
    import signal
    import stat
    import subprocess
    import sys

    from mlflow import MlflowClient

    from flows.nights import LOCK

    api, env = prefect_server
    params = tiny(tmp_path, trials=1, epochs=1, iw_samples=0, model_name="vae-suspend", require_approval=True)
    held = tmp_path / "night.held"
    hold = {"VAE_PIPELINE_HOLD_AT": "fetch", "VAE_PIPELINE_HOLD_FILE": str(held), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    env = {**env, **hold, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    served = open(tmp_path / "serve.log", "wb")
    serve = serve_deployments(
        env, *[f"--param={k}={json.dumps(v)}" for k, v in params.items()], cwd=tmp_path, log=served
    )
    lock, uri = tmp_path / "work" / LOCK, params["tracking_uri"]

    def state(run: str) -> dict:
        return prefect_api(api, f"/flow_runs/{run}")["state"]

    def until(what, check, timeout=420):
        deadline = time.time() + timeout
        while not (got := check()):
            if time.time() > deadline:
                log = (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"{what}: not within {timeout} s\n{log}")
            time.sleep(0.5)
        return got

    def held_pid() -> int:
        pid = int(until("a night held at the end of fetch", lambda: held.exists() and held.read_text()))
        held.unlink()
        return pid

    try:
        dep = nightly_deployment(api, "vae-suspend")
        first = prefect_api(api, f"/deployments/{dep['id']}/create_flow_run", {})["id"]
        os.kill(held_pid(), signal.SIGCONT)
        until("night 1 suspended", lambda: state(first)["name"] == "Suspended")
        assert state(first)["type"] == "PAUSED"
        until("night 1's process gone and its lock freed", lambda: not lock.exists())
        parked = tmp_path / "work" / "sign-off" / f"{first}.json"
        assert stat.S_IMODE(parked.stat().st_mode) == 0o600
        client = MlflowClient(uri, uri)
        v1 = client.get_model_version("vae-suspend", "1")
        assert json.loads(v1.tags["sign_off.awaiting"])["flow_run"] == first and "promotion.decision" not in v1.tags

        second = prefect_api(api, f"/deployments/{dep['id']}/create_flow_run", {})["id"]
        night2 = held_pid()  # the next night runs, holding the lock and the slot, while night 1 waits
        assert state(second)["type"] == "RUNNING" and json.loads(lock.read_text())["flow_run_id"] == second
        signed = subprocess.run(
            [sys.executable, "-m", "flows.signoff", "approve", "--reviewer", "ada", "--flow-run", first],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr[-3000:]
        cancelled = until("the resumed night 1 refused the busy slot", lambda: state(first)["type"] == "CANCELLED")
        assert cancelled and "concurrency limit" in state(first)["message"], state(first)
        os.kill(night2, signal.SIGCONT)
        until("night 2 over", lambda: state(second)["type"] in ("COMPLETED", "PAUSED"))
        until("night 1 rescheduled and decided", lambda: state(first)["type"] == "COMPLETED")
        v1 = client.get_model_version("vae-suspend", "1")
        assert str(client.get_registered_model("vae-suspend").aliases["champion"]) == "1"
        assert v1.tags["promotion.decision"] == "promoted" and v1.tags["approval.reviewer"] == "ada", v1.tags
        assert "sign_off.awaiting" not in v1.tags and not parked.exists()
        log = (tmp_path / "serve.log").read_text(errors="replace")
        assert "rescheduled to decide" in log and log.count("sign-off: approve by ada") == 1, log[-4000:]
    finally:
        for run in prefect_api(api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}):
            prefect_api(api, f"/flow_runs/{run['id']}/set_state", {"state": {"type": "CANCELLED"}, "force": True})
        stop_server(serve)
        served.close()
