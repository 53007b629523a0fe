"""The shared services as a team runs them (vae/services.py): PostgreSQL for MLflow and Optuna, a live
MLflow server and Prefect server, a worker; a study run through them, with the database password nowhere
in sight; and a clean stop."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.helpers import free_port
from vae.child import last_json

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def services(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae.services", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (.ci/run installs them)")
    home = Path(tempfile.mkdtemp(prefix="vae-services-"))  # under /tmp: the postgres user must reach it
    base = free_port()  # postgres here, mlflow and prefect on the next two
    started = services(home, "start", "--base-port", str(base))
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        exports = started.stdout.split("export ", 1)[1].split()
        yield home, dict(x.split("=", 1) for x in exports), started.stdout
    finally:
        services(home, "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_a_study_runs_through_postgresql_and_the_mlflow_server_and_the_password_stays_hidden(stack, tmp_path):
    home, env, printed = stack
    assert env["VAE_OPTUNA_STORAGE"].startswith("postgresql+psycopg://vae@127.0.0.1:")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae",
            "tune",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--subset",
            "200",
            "--study",
            "team",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = last_json(r.stdout)
    assert summary["trials"] == 2 and summary["tracking_uri"] == env["MLFLOW_TRACKING_URI"]
    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    study = optuna.load_study(study_name="team", storage=env["VAE_OPTUNA_STORAGE"])
    assert len(study.trials) == 2
    with urllib.request.urlopen(
        f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/get?run_id={summary['parent_run_id']}"
    ) as resp:
        run = resp.read().decode()
    password = (Path(env["PGPASSFILE"]).read_text().strip().split(":"))[-1]
    assert len(password) >= 20 and oct(Path(env["PGPASSFILE"]).stat().st_mode)[-3:] == "600"
    seen = {"printed": printed, "tune stdout": r.stdout, "tune stderr": r.stderr, "mlflow run": run}
    seen |= {p.name: p.read_text(errors="replace") for p in home.glob("*.log")}
    assert [where for where, text in seen.items() if password in text] == []


def test_a_nightly_deployment_runs_through_a_worker_on_the_stack(stack, tmp_path):
    home, env, _ = stack
    client = {**os.environ, **env, "PREFECT_HOME": str(home / "prefect")}
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.deploy",
            "--work-pool",
            "vae",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--param",
            "subset=300",
            "--param",
            "min_epochs=1",
            "--param",
            "iw_samples=0",
            "--param",
            f'workdir="{tmp_path / "work"}"',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=client,
    )
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    prefect = str(Path(sys.executable).parent / "prefect")
    run = subprocess.run(
        [prefect, "deployment", "run", "vae-pipeline/nightly", "--watch", "--watch-timeout", "900"],
        capture_output=True,
        text=True,
        timeout=960,
        env=client,
    )
    assert run.returncode == 0 and "Flow run finished successfully in 'Completed'" in run.stdout, run.stdout[-3000:]
    flow_run = run.stdout.split("UUID: ")[1].split()[0]
    inspected = subprocess.run(
        [prefect, "flow-run", "inspect", flow_run], capture_output=True, text=True, env=client
    ).stdout
    with urllib.request.urlopen(
        f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/get?name=vae-mnist-5k"
    ) as resp:
        model = json.loads(resp.read())["registered_model"]
    assert model["latest_versions"] and any(a["alias"] == "champion" for a in model.get("aliases", []))
    password = (Path(env["PGPASSFILE"]).read_text().strip().split(":"))[-1]
    seen = {"flow run": inspected, "deploy": deploy.stdout + deploy.stderr, "run": run.stdout}
    seen |= {p.name: p.read_text(errors="replace") for p in home.glob("*.log")}
    assert [where for where, text in seen.items() if password in text] == []


def start_night(stack, work: Path, model: str) -> tuple[list[str], str, dict[str, str]]:
    """A 40-epoch night of the served deployment on `work`, for a worker to pick up: (its parameters, its
    flow-run id, the client environment)."""
    home, env, _ = stack
    client = {**os.environ, **env, "PREFECT_HOME": str(home / "prefect")}
    prefect = str(Path(sys.executable).parent / "prefect")
    params = ["-p", "epochs=40", "-p", "subset=2000", "-p", f'workdir="{work}"', "-p", f'model_name="{model}"']
    started = subprocess.run(
        [prefect, "deployment", "run", "vae-pipeline/nightly", *params],
        capture_output=True,
        text=True,
        timeout=120,
        env=client,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    return params, started.stdout.split("UUID: ")[1].split()[0], client


def test_a_worker_killed_mid_run_leaves_a_crashed_run_and_the_next_run_completes(stack, tmp_path):
    home = stack[0]
    prefect = str(Path(sys.executable).parent / "prefect")
    work = tmp_path / "work"
    params, first_id, client = start_night(stack, work, "vae-killed")
    deadline = time.time() + 600
    while not list(work.glob("studies/*/trial-*/checkpoint.pt")):  # the night is training
        assert time.time() < deadline, (home / "worker.log").read_text()[-3000:]
        time.sleep(0.5)
    night = json.loads((work / "night.lock").read_text())
    pids = json.loads((home / "pids.json").read_text())
    os.killpg(pids["worker"]["pid"], signal.SIGKILL)  # the worker's machine dies: the worker and the night it ran
    with contextlib.suppress(ProcessLookupError):
        os.kill(night["pid"], signal.SIGKILL)
    # flows.deploy's automation marks the silent run Crashed after 3 missed heartbeats (90 s), which frees
    # the deployment's slot: the next run is not cancelled as an overlap, nor kept waiting for the lease
    deadline = time.time() + 300
    while "StateType.CRASHED" not in (inspected := inspect(prefect, first_id, client)):
        assert time.time() < deadline, inspected[-2000:]
        time.sleep(5)
    assert "no heartbeat for 90 s" in inspected, inspected[-2000:]
    assert services(home, "worker").returncode == 0  # a new worker comes up
    second = subprocess.run(
        [prefect, "deployment", "run", "vae-pipeline/nightly", *params, "--watch", "--watch-timeout", "900"],
        capture_output=True,
        text=True,
        timeout=960,
        env=client,
    )
    assert "Flow run finished successfully in 'Completed'" in second.stdout, second.stdout[-3000:]


def inspect(prefect: str, flow_run_id: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [prefect, "flow-run", "inspect", flow_run_id], capture_output=True, text=True, env=env, timeout=60
    ).stdout


def test_stop_ends_every_service_and_the_night_a_worker_is_running(tmp_path, stack):
    import psutil

    home = stack[0]
    work = tmp_path / "work"
    start_night(stack, work, "vae-stopped")
    deadline = time.time() + 300
    while not (work / "night.lock").exists():  # a worker runs the night (a process group of its own)
        assert time.time() < deadline, (home / "worker.log").read_text()[-3000:]
        time.sleep(0.5)
    night = psutil.Process(json.loads((work / "night.lock").read_text())["pid"])
    family = [night, *night.children(recursive=True)]
    pids = json.loads((home / "pids.json").read_text())
    assert services(home, "stop").returncode == 0
    for rec in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(rec["pid"], 0)
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert not (home / "pg" / "postmaster.pid").exists() and not (home / "pids.json").exists()
