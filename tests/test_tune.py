"""`vae tune`: real Optuna studies (SQLite, journal, PostgreSQL), real torchrun/gloo DDP trials, real MLflow stores
(SQLite and a live `mlflow server`), SIGKILL of a worker and its resume. Budgets are tiny: 300-1000 images,
1-5 epochs, small fixed networks where the search space does not matter to the test."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import communicate_all, free_port, run_cli, start_server, stop_server, throwaway_postgres
from vae.cli import main
from vae.config import Config

# A fixed small network: only lr is searched, so studies are fast and their trials comparable.
SMALL_SPACE = """
lr = {low = 1e-3, high = 3e-3, log = true}
batch_size = 64
latent = 8
hidden_width = 64
hidden_depth = 1
model = "vae"
"""
BASE = ["tune", "--subset", "300", "--epochs", "2"]


def one_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout  # only rank 0 prints
    return json.loads(lines[0])


def load_study(storage: str, name: str):
    import optuna

    from vae.tune import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=None))


def space_file(folder: Path, text: str = SMALL_SPACE) -> Path:
    path = folder / "space.toml"
    path.write_text(text)
    return path


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this test started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "text, message",
    [
        ("[lr]\nlow = 0.1\nhigh = 0.01\n", "[lr] low=0.1 > high=0.01: expected low <= high"),
        ("[depth]\nlow = 1\nhigh = 2\n", "unknown parameter [depth]: expected some of lr, beta, batch_size"),
        ("[batch_size]\nchoices = []\n", "[batch_size] choices=[] is invalid: expected a non-empty list"),
        ('[model]\nchoices = ["vae", "ae"]\n', "[model] model='ae' is invalid in a search"),
        ("[latent]\nlow = 0\nhigh = 8\n", "[latent] latent=0 is invalid: expected an integer from 1 to 4096"),
        ("[lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\nstep = 0.1\n", "[lr] cannot have both log and step"),
        ("[lr]\nlow = 1e-4\nhihg = 1e-2\n", "[lr] has unknown key(s) ['hihg']"),
        ("[hidden_width]\nlow = 64.5\nhigh = 128\n", "[hidden_width] low=64.5 is invalid: expected an integer"),
        ("[lr\nlow = 1\n", "cannot be parsed"),
        ('lr_schedule = ["exp", "cosine"]\n', "[lr_schedule] lr_schedule='cosine' is invalid"),
    ],
)
def test_an_invalid_space_file_exits_2_naming_the_entry_and_writes_nothing(
    tmp_path, monkeypatch, capsys, text, message
):
    path = space_file(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--space", str(path), "--trials", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vae: error: space file {path}") and len(err.splitlines()) == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.toml"]  # no mlruns/, no study


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "trials=0 is invalid: expected an integer >= 1"),
        (["--pruner", "sha"], "pruner='sha' is invalid: expected one of asha, asha-global, hyperband, median, none"),
        (["--seed", "3"], "--seed is ambiguous for vae tune: --sampler-seed seeds the sampler"),
        (["--min-epochs", "0"], "min_epochs=0 is invalid: expected an integer from 1 to epochs=10"),
        (["--sampler", "grid"], "sampler='grid' is invalid"),
        (["--timeout", "-5"], "timeout=-5.0 is invalid"),
        (["--space", "/no/such.toml"], "space file /no/such.toml does not exist"),
        (["--nproc", "0"], "nproc=0 is invalid"),
        (["--no-tracking", "--tracking-uri", "m.db"], "tracking_uri='m.db' is invalid with tracking=False"),
        (["--no-tracking", "--parent-run-id", "abc"], "parent_run_id='abc' is invalid with tracking=False (--no-t"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae: error: ") and len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_unreachable_storage_is_one_line_and_creates_no_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://vae:secret@127.0.0.1:{free_port()}/optuna"
    assert main(["tune", "--storage", url, "--subset", "300", "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be opened" in err and "secret" not in err, err
    assert not (tmp_path / "mlruns").exists()


def test_the_space_file_overrides_defaults_and_maps_onto_the_config(tmp_path):
    import optuna

    from vae.tune import DEFAULT_SPACE, load_space, suggest, to_config

    path = space_file(
        tmp_path,
        "lr = 0.002\nbatch_size = [32, 64]\n[hidden_depth]\nvalue = 2\n"
        "[hidden_width]\nlow = 16\nhigh = 32\nstep = 16\n",
    )
    base = Config()
    space = load_space(path, base)
    assert space["lr"] == {"value": 0.002} and space["batch_size"] == {"choices": [32, 64]}
    assert space["latent"] == DEFAULT_SPACE["latent"]  # untouched entries keep their defaults
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = suggest(trial, space)
    cfg = to_config(base, params)
    assert "lr" not in trial.params and cfg.train.lr == 0.002  # fixed values are not searched
    assert cfg.model.hidden == (params["hidden_width"],) * 2 and params["hidden_width"] in (16, 32)
    assert cfg.train.batch_size in (32, 64) and Config.from_dict(cfg.to_dict()) == cfg
    yaml = tmp_path / "space.yaml"
    yaml.write_text("lr: {low: 0.001, high: 0.002}\nmodel: [conv-vae]\nlr_schedule: [constant, exp]\n")
    space = load_space(yaml, base)
    assert space["model"] == {"choices": ["conv-vae"]} and space["lr_schedule"] == {"choices": ["constant", "exp"]}
    assert to_config(base, {"lr_schedule": "exp"}).train.lr_schedule == "exp"


# ---------------------------------------------------------------------------------------- studies that run
@pytest.mark.slow
def test_a_nan_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    # Trial 0 is the seed recipe (a fixed config here: the space cannot express it); then only lr is drawn, from
    # {10, 0.001}: the seeded random sampler draws 0.001, then 10.
    path = space_file(tmp_path, SMALL_SPACE.replace("lr = {low = 1e-3, high = 3e-3, log = true}", "lr = [10.0, 0.001]"))
    monkeypatch.chdir(tmp_path)
    args = [
        *BASE,
        "--space",
        str(path),
        "--trials",
        "3",
        "--sampler",
        "random",
        "--sampler-seed",
        "0",
        "--pruner",
        "none",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"complete": 2, "pruned": 0, "fail": 1, "running": 0, "waiting": 0}
    study = load_study(summary["storage"], summary["study"])
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [2] and failed[0].params["lr"] == 10.0
    assert "validation neg_elbo is nan" in failed[0].user_attrs["fail_reason"]
    assert study.trials[0].user_attrs["origin"] == "recipe" and study.trials[1].state.name == "COMPLETE"

    from mlflow import MlflowClient

    run = MlflowClient(summary["tracking_uri"]).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "fail"
    assert "nan" in run.data.tags["reason"]
    # A trial's run is the same live run as `vae train`'s: config and drawn params, the data as a dataset
    # input, per-epoch metrics, under the study run; no system metrics (cheap for short trials).
    client = MlflowClient(summary["tracking_uri"])
    done = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert done.data.tags["mlflow.parentRunId"] == summary["parent_run_id"] and done.data.tags["state"] == "complete"
    assert done.data.params["lr"] == done.data.params["train.lr"] == "0.001"
    assert [d.dataset.name for d in done.inputs.dataset_inputs] == ["mnist-5k"]
    assert len(client.get_metric_history(done.info.run_id, "val_neg_elbo")) == 2
    assert not any(k.startswith("system/") for k in done.data.metrics)
    study_run = client.get_run(summary["parent_run_id"])
    assert summary["best_trial"] in (0, 1)  # the two that completed
    assert study_run.data.tags["best_trial_run_id"] == study.trials[summary["best_trial"]].user_attrs["mlflow_run_id"]
    assert not (tmp_path / "mlruns" / "studies" / summary["study"] / "trial-2").exists()
    best = Path(summary["out"]) / f"trial-{summary['best_trial']}" / "checkpoint.pt"
    assert best.is_file() and Config.from_dict(summary["best_config"]).train.lr == 0.001

    # Rerunning with another space is refused: the study's trials would not be comparable.
    other = space_file(tmp_path, SMALL_SPACE.replace("latent = 8", "latent = 4"))
    assert main([*BASE, "--space", str(other), "--trials", "4"]) == 2
    assert "was created with another space" in capsys.readouterr().err


@pytest.fixture
def mlflow_server(tmp_path):
    """A live `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder (started again on
    another port if the first is taken before it binds)."""
    home = tmp_path / "mlflow-server"
    home.mkdir()
    proc, url = start_server(
        [
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--workers",
            "1",
        ],
        health="/health",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_TRACKING_URI": None},
        timeout=90,
        log=home / "server.log",
    )
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_a_ddp_study_builds_the_run_tree_on_a_live_mlflow_server(tmp_path, mlflow_server):
    space = space_file(tmp_path)
    r = run_cli(
        *BASE,
        "--space",
        space,
        "--trials",
        "2",
        "--nproc",
        "2",
        "--pruner",
        "none",
        "--study",
        "ddp",
        "--storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        "--out",
        tmp_path / "trials",
        "--tracking-uri",
        mlflow_server,
        "--json",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = one_json(r.stdout)
    assert s["counts"]["complete"] == 2 and s["trials"] == 2 and s["tracking_uri"] == mlflow_server
    assert r.stderr.count("on 2 process(es)") == 2  # every trial was a 2-process DDP run
    study = load_study(f"sqlite:///{tmp_path / 'optuna.db'}", "ddp")
    assert [t.user_attrs["nproc"] for t in study.trials] == [2, 2]
    assert Config.from_dict(s["best_config"]).to_dict() == s["best_config"]

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    parent = client.get_run(s["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study"] == "ddp"
    assert parent.data.tags["dataset_fingerprint"] and json.loads(parent.data.tags["search_space"])["latent"]
    assert "mlflow.source.git.commit" in parent.data.tags
    assert parent.data.metrics["best_val_neg_elbo"] == pytest.approx(s["best_value"])
    artifacts = {a.path for a in client.list_artifacts(s["parent_run_id"])}
    assert {"optimization_history.png", "parallel_coordinate.png", "trials.csv"} <= artifacts
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{s['parent_run_id']}'"
    )
    assert sorted(c.info.run_name for c in children) == ["trial-0", "trial-1"]
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["state"] == "complete"
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_neg_elbo")] == [1, 2]
        assert "final_val_neg_elbo" in c.data.metrics and c.data.params["nproc"] == "2"

    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(s["best_model_uri"])  # what the pipeline will register
    z = model.predict(np.zeros((3, 784), dtype=np.float32), params={"op": "encode"})
    assert z.shape == (3, Config.from_dict(s["best_config"]).model.latent)


@pytest.mark.slow
def test_pruning_under_ddp_stops_the_trial_in_both_ranks(tmp_path):
    # No validation -ELBO is under 100 nats after one epoch: every drawn trial is pruned there, in every rank,
    # instead of training on (a rank that missed the prune would wait forever in the next all-reduce). Trial 0,
    # the seed recipe, is never pruned: it runs its 3 epochs in both ranks.
    journal = tmp_path / "study.log"
    r = run_cli(
        *BASE,
        "--space",
        space_file(tmp_path),
        "--trials",
        "2",
        "--epochs",
        "3",
        "--nproc",
        "2",
        "--pruner",
        "threshold:100",
        "--storage",
        f"journal:{journal}",
        "--out",
        tmp_path / "trials",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--json",
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = one_json(r.stdout)
    assert s["counts"]["pruned"] == 1 and s["counts"]["complete"] == 1 and s["best_trial"] == 0
    study = load_study(f"journal:{journal}", s["study"])
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1, 2, 3], [1]]
    assert r.stderr.count("rank 1: left the trial: pruned at epoch 1") == 1
    assert [p.parent.name for p in (tmp_path / "trials").glob("trial-*/checkpoint.pt")] == ["trial-0"]  # pruned: none


# `python -m vae` behind a start barrier: the worker's first trial waits, inside the trial, until every
# worker of the barrier folder has reached its own first trial. So each worker holds a running trial at the
# same moment (they do run side by side, whatever their start-up times), and none can take all the trials
# before the other is up. The real tune code runs unchanged; only the objective's fit is wrapped.
BARRIER_MAIN = """
import os, sys, time
from pathlib import Path
folder, parties = Path(sys.argv[1]), int(sys.argv[2])
import vae.tune.objective
fit = vae.tune.objective.fit
def first_fit_waits(*args, **kwargs):
    if not first_fit_waits.passed:
        first_fit_waits.passed = True
        (folder / f"worker-{os.getpid()}").touch()
        deadline = time.time() + 180
        while len(list(folder.glob("worker-*"))) < parties:
            if time.time() > deadline:
                raise RuntimeError("start barrier: the other worker never started a trial")
            time.sleep(0.05)
    return fit(*args, **kwargs)
first_fit_waits.passed = False
vae.tune.objective.fit = first_fit_waits
from vae.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _worker(
    tmp_path: Path, storage: str, name: str, trials: int, *extra, barrier: tuple[Path, int] | None = None
) -> subprocess.Popen:
    launcher = (
        [sys.executable, "-m", "vae"]
        if barrier is None
        else [sys.executable, "-c", BARRIER_MAIN, str(barrier[0]), str(barrier[1])]
    )
    cmd = [
        *launcher,
        *BASE,
        "--space",
        str(space_file(tmp_path)),
        "--trials",
        str(trials),
        "--study",
        name,
        "--storage",
        storage,
        "--pruner",
        "none",
        "--out",
        str(tmp_path / "trials"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--json",
        *map(str, extra),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _two_workers_finish_exactly(tmp_path: Path, storage: str, trials: int) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        _worker(tmp_path, storage, "shared", trials, "--epochs", "2", "--subset", "300", barrier=(barrier, 2))
        for _ in range(2)
    ]
    try:
        outs = communicate_all(procs, timeout=300)
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summaries = [one_json(o[0]) for o in outs]
    assert sum(s["trials_run_here"] for s in summaries) == trials
    # they did work side by side: the barrier held each worker's first trial until the other had one running
    assert all(s["trials_run_here"] >= 1 for s in summaries), summaries
    assert len(list(barrier.glob("worker-*"))) == 2
    study = load_study(storage, "shared")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * trials  # no surplus trial, none lost
    assert sorted(t.number for t in study.trials) == list(range(trials))  # no duplicates
    assert len({json.dumps(t.user_attrs["config"], sort_keys=True) for t in study.trials}) == trials
    # Both workers attached their trials to the one parent run of the study.
    assert summaries[0]["parent_run_id"] == summaries[1]["parent_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = client.search_runs(
        [summaries[0]["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{summaries[0]['parent_run_id']}'"
    )
    assert len(children) == len(study.trials)


@pytest.mark.slow
def test_two_concurrent_workers_on_one_sqlite_study_finish_the_exact_trial_count(tmp_path):
    _two_workers_finish_exactly(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", trials=5)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (tests/helpers.throwaway_postgres)."""
    with throwaway_postgres() as url:
        yield url


@pytest.mark.slow
def test_two_workers_share_one_study_through_postgresql(tmp_path, postgres):
    _two_workers_finish_exactly(tmp_path, postgres, trials=4)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_trial_that_the_rerun_fails_and_retries(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = (tmp_path, storage, "resume", 1, "--heartbeat", "1", "--epochs", "5", "--subset", "1000")
    proc = _worker(*args)
    try:
        import optuna

        deadline = time.time() + 180
        while time.time() < deadline:  # wait until trial 0 has reported an epoch, then kill -9 the worker
            try:
                trials = load_study(storage, "resume").trials
            except (KeyError, optuna.exceptions.OptunaError, Exception):
                trials = []
            if trials and trials[0].intermediate_values:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    killed = load_study(storage, "resume").trials[0]
    assert killed.state.name == "RUNNING" and len(killed.intermediate_values) < 5

    rerun = _worker(*args)  # the same command: waits for the heartbeat to go stale, then retries
    try:
        out, err = rerun.communicate(timeout=300)
    finally:
        stop(rerun)
    assert rerun.returncode == 0, err[-3000:]
    s = one_json(out)
    study = load_study(storage, "resume")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert s["trials"] == 1 and s["best_trial"] == 1

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lost = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert lost.info.status == "FAILED" and lost.data.tags["state"] == "fail"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["state"] == "complete"


@pytest.mark.slow
def test_workers_run_trials_at_once_and_the_study_ends_at_the_exact_count(tmp_path):
    path = space_file(tmp_path, SMALL_SPACE)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    r = run_cli(
        *BASE,
        "--space",
        path,
        "--trials",
        "3",
        "--workers",
        "2",
        "--storage",
        storage,
        "--study",
        "w2",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--out",
        tmp_path / "trials",
        "--json",
        "--epochs",
        "1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = one_json(r.stdout)  # the workers print no JSON: only the parent's summary
    assert summary["workers"] == 2 and summary["trials"] == 3 and summary["trials_run_here"] == 0
    assert sum(summary["counts"].values()) == 3 and summary["surplus"] == 0
    study = load_study(storage, "w2")
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert {t.user_attrs["worker"] for t in study.trials} == {"0", "1"}  # both workers took trials


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_no_tracking_runs_the_study_where_mlflow_cannot_be_imported(tmp_path, workers):
    """`vae tune --no-tracking` (and its workers, which inherit PYTHONPATH) with an `mlflow` that raises on
    import, as on a machine without it: the trials complete and no MLflow store appears."""
    block = tmp_path / "block"
    (block / "mlflow").mkdir(parents=True)
    (block / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is blocked in this test')\n")
    work = tmp_path / "work"
    work.mkdir()
    storage = f"sqlite:///{work}/optuna.db"
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(x for x in (str(block), str(root), os.environ.get("PYTHONPATH")) if x)
    r = subprocess.run(
        [sys.executable, "-m", "vae", *BASE, "--epochs", "1", "--trials", "2", "--workers", str(workers)]
        + ["--space", str(space_file(tmp_path)), "--storage", storage, "--study", "nt", "--out", str(work / "trials")]
        + ["--no-tracking", "--json"],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = one_json(r.stdout)
    assert summary["trials"] == 2 and summary["counts"]["complete"] + summary["counts"]["pruned"] == 2
    assert summary["trials_run_here"] == (2 if workers == 1 else 0)
    assert summary["tracking"] is False and summary["tracking_uri"] is None and summary["best_model_uri"] is None
    assert summary["parent_run_id"] is None and summary["experiment_id"] is None
    assert {p.name for p in work.iterdir() if not p.name.startswith("optuna.db")} == {"trials"}  # no mlruns/
    assert not list(tmp_path.rglob("mlflow.db"))
    trials = load_study(storage, "nt").trials
    assert all("mlflow_run_id" not in t.user_attrs for t in trials)
    complete = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert sorted(p.name for p in (work / "trials").iterdir()) == [f"trial-{n}" for n in complete]
