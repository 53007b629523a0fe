"""The shared services as a team runs them (vae/services.py): PostgreSQL for MLflow and Optuna, a live
MLflow server and Prefect server behind their logins, a worker; a study and nights run through them, with
no password in sight; a sign-off that takes the reviewer's own MLflow login; and a clean stop."""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.helpers import free_port, webhook_receiver
from vae import credentials
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
def receiver():
    """A receiver on 127.0.0.1 that the stack's notifications are sent to: (its URL, the calls it got)."""
    with webhook_receiver() as got:
        yield got


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    if not sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (.ci/run installs them)")
    home = Path(tempfile.mkdtemp(prefix="vae-services-"))  # under /tmp: the postgres user must reach it
    base = free_port()  # postgres here, mlflow and prefect on the next two
    os.environ["VAE_TEST_HOOK_SECRET"] = "hook-secret-of-the-stack"
    started = services(
        home, "start", "--base-port", str(base), "--notify", f"{receiver[0]}/hook", "--notify-secret-env",
        "VAE_TEST_HOOK_SECRET",
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield home, credentials.read_env(home / "client.env"), started.stdout
    finally:
        services(home, "stop")
        shutil.rmtree(home, ignore_errors=True)


def secrets_of(home: Path) -> dict[str, str]:
    """Every password of the stack: PostgreSQL's (pgpass) and the logins of vae/credentials.py."""
    found = {k: v.split(":")[-1] for k, v in credentials.stored(home).items()}
    return found | {"postgres": (home / "pgpass").read_text().strip().split(":")[-1]}


def leaks(home: Path, seen: dict[str, str]) -> list[str]:
    """(where, which secret) for each secret of the stack found in `seen` or in the stack's logs."""
    seen = seen | {p.name: p.read_text(errors="replace") for p in home.glob("*.log")}
    return [f"{where}: {k}" for where, text in seen.items() for k, v in secrets_of(home).items() if v in text]


def mlflow_get(env: dict[str, str], path: str, login: tuple[str, str] | None = None) -> dict:
    """GET on the MLflow server's REST API, as the pipeline unless `login` says otherwise."""
    user, password = login or (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(env["MLFLOW_TRACKING_URI"] + path, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def status_of(req: urllib.request.Request | str) -> int:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_every_service_needs_a_login_and_the_logins_stay_private(stack):
    home, env, printed = stack
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert status_of(env["MLFLOW_TRACKING_URI"] + search) == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        mlflow_get(env, search, ("pipeline", "not-the-password"))
    assert wrong.value.code == 401 and "experiments" in mlflow_get(env, search)
    flows = env["PREFECT_API_URL"] + "/flows/filter"
    ask = {"data": b"{}", "method": "POST", "headers": {"Content-Type": "application/json"}}
    assert status_of(urllib.request.Request(flows, **ask)) == 401
    token = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
    authed = {**ask, "headers": {**ask["headers"], "Authorization": f"Basic {token}"}}
    assert status_of(urllib.request.Request(flows, **authed)) == 200
    kept = ["credentials.json", "client.env", "mlflow-auth.ini", "pgpass"]
    assert {name: oct((home / name).stat().st_mode)[-3:] for name in kept} == dict.fromkeys(kept, "600")
    assert leaks(home, {"printed": printed}) == []


def test_a_changed_password_is_refused_at_once_though_good_logins_are_cached(stack):
    """The server keeps a good login for AUTH_CACHE_S (vae/credentials.py): a password changed through its API
    must still end the old one at once."""
    home, env, _ = stack
    url, search = env["MLFLOW_TRACKING_URI"], "/api/2.0/mlflow/experiments/search?max_results=1"
    assert f"auth_cache_ttl_seconds = {credentials.AUTH_CACHE_S}" in (home / "mlflow-auth.ini").read_text()
    credentials.ensure_user(url, home, "rotated", "first-password-of-rotated")
    assert "experiments" in mlflow_get(env, search, ("rotated", "first-password-of-rotated"))  # now cached
    admin = ("admin", credentials.stored(home)["mlflow_admin"])
    body = json.dumps({"username": "rotated", "password": "second-password-of-rotated"}).encode()
    token = base64.b64encode(":".join(admin).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    change = urllib.request.Request(url + "/api/2.0/mlflow/users/update-password", body, headers, method="PATCH")
    assert status_of(change) == 200
    with pytest.raises(urllib.error.HTTPError) as old:
        mlflow_get(env, search, ("rotated", "first-password-of-rotated"))
    assert old.value.code == 401
    assert "experiments" in mlflow_get(env, search, ("rotated", "second-password-of-rotated"))


def test_a_replaced_credentials_file_is_named_not_a_bare_401(stack, tmp_path):
    """credentials.json deleted after the first start: the next start makes a new admin password, which the
    auth database (made at the first start) refuses; the message says which file and what to do."""
    home, env, _ = stack
    other = tmp_path / "home"
    other.mkdir()
    credentials.stored(other)  # a new credentials.json: other passwords than the stack's database knows
    with pytest.raises(SystemExit) as refused:
        credentials.ensure_user(env["MLFLOW_TRACKING_URI"], other, "pipeline", "any")
    assert str(refused.value).startswith(f"services: MLflow refused the admin login of {other / 'credentials.json'}")
    assert "drop the mlflow_auth database" in str(refused.value)


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
    run = json.dumps(mlflow_get(env, f"/api/2.0/mlflow/runs/get?run_id={summary['parent_run_id']}"))
    assert all(len(v) >= 20 for v in secrets_of(home).values())
    seen = {"printed": printed, "tune stdout": r.stdout, "tune stderr": r.stderr, "mlflow run": run}
    assert leaks(home, seen) == []


@pytest.fixture(scope="module")
def deployed(stack, tmp_path_factory):
    """The nightly deployment of flows.deploy on the stack, a tiny night (its output: no secret in it)."""
    home, env, _ = stack
    client = {**os.environ, **env, "PREFECT_HOME": str(home / "prefect")}
    params = {"subset": "300", "min_epochs": "1", "iw_samples": "0"}
    params["workdir"] = f'"{tmp_path_factory.mktemp("deployed") / "work"}"'
    deploy = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "--work-pool", "vae", "--trials", "1", "--epochs", "1"]
        + [f"--param={k}={v}" for k, v in params.items()],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=client,
    )
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    return client, deploy.stdout + deploy.stderr


def test_a_nightly_deployment_runs_through_a_worker_on_the_stack(stack, deployed):
    home, env, _ = stack
    client, deploy = deployed
    prefect = str(Path(sys.executable).parent / "prefect")
    run = subprocess.run(
        [prefect, "deployment", "run", "vae-pipeline/nightly", "--watch", "--watch-timeout", "900"],
        capture_output=True,
        text=True,
        timeout=960,
        env=client,
    )
    assert run.returncode == 0 and "Flow run finished successfully in 'Completed'" in run.stdout, run.stdout[-3000:]
    inspected = inspect(prefect, run.stdout.split("UUID: ")[1].split()[0], client)
    model = mlflow_get(env, "/api/2.0/mlflow/registered-models/get?name=vae-mnist-5k")["registered_model"]
    assert model["latest_versions"] and any(a["alias"] == "champion" for a in model.get("aliases", []))
    assert leaks(home, {"flow run": inspected, "deploy": deploy, "run": run.stdout}) == []


def wait_for(prefect: str, flow_run: str, env: dict[str, str], text: str, seconds: float = 600) -> str:
    """The flow run's inspection once it holds `text`."""
    deadline = time.time() + seconds
    while text not in (inspected := inspect(prefect, flow_run, env)):
        assert time.time() < deadline, inspected[-2000:]
        time.sleep(2)
    return inspected


def signoff(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.signoff", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


def test_a_sign_off_is_taken_only_from_a_reviewer_logged_in_with_edit_on_the_model(stack, deployed, receiver):
    """Prefect's one credential can resume a paused run with any name in the form: the night refuses such an
    answer and pauses again; a login without EDIT on the model is refused by MLflow; a granted reviewer's
    answer frees the night, and the version records that login. The receiver that `start --notify` named was
    told of the new version (by MLflow, signed) and of the waiting sign-off (by Prefect)."""
    home, env, _ = stack
    client, _ = deployed
    prefect = str(Path(sys.executable).parent / "prefect")
    params = ["-p", "require_approval=true", "-p", 'model_name="vae-signed"', "-p", "approval_timeout=900"]
    started = subprocess.run(
        [prefect, "deployment", "run", "vae-pipeline/nightly", *params], capture_output=True, text=True, env=client
    )
    flow_run = started.stdout.split("UUID: ")[1].split()[0]
    wait_for(prefect, flow_run, client, "pause_key='sign-off-0-")
    forged = "from prefect.flow_runs import resume_flow_run as r; import sys; "
    forged += "r(sys.argv[1], run_input={'decision': 'approve', 'reviewer': 'ada', 'comment': 'typed in'})"
    subprocess.run([sys.executable, "-c", forged, flow_run], check=True, env=client, timeout=120)
    wait_for(prefect, flow_run, client, "pause_key='sign-off-1-")  # refused: paused again
    people = {}
    for name, grant in (("eve", []), ("ada", ["--grant", "vae-signed"])):
        made = services(home, "user", name, *grant)
        assert made.returncode == 0, made.stderr
        people[name] = {**os.environ, **credentials.read_env(home / "users" / f"{name}.env")}
        assert oct((home / "users" / f"{name}.env").stat().st_mode)[-3:] == "600"
    refused = signoff(people["eve"], "approve", "--comment", "looks fine")
    assert refused.returncode == 2 and "'eve' may not sign off on vae-signed" in refused.stderr, refused.stderr
    posing = signoff(people["eve"], "approve", "--reviewer", "ada")
    assert posing.returncode == 2 and "logged in to MLflow as 'eve'" in posing.stderr, posing.stderr
    answered = signoff(people["ada"], "approve", "--comment", "clear gain")
    assert answered.returncode == 0, answered.stderr
    wait_for(prefect, flow_run, client, "StateType.COMPLETED")
    version = mlflow_get(env, "/api/2.0/mlflow/registered-models/alias?name=vae-signed&alias=champion")
    tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
    assert tags["approval.reviewer"] == "ada" and json.loads(tags["sign_off"])["flow_run"] == flow_run
    logs = subprocess.run([prefect, "flow-run", "logs", flow_run], capture_output=True, text=True, env=client).stdout
    assert "sign-off refused (approve by 'ada'): no sign_off tag on vae-signed v1" in logs, logs[-3000:]
    assert leaks(home, {"logs": logs, "answers": refused.stderr + posing.stderr + answered.stdout}) == []
    deadline, told = time.time() + 60, receiver[1]
    while not (heard := heard_of(told)) >= {"version created", "sign-off waits"} and time.time() < deadline:
        time.sleep(1)
    assert heard >= {"version created", "sign-off waits"}, [body[:300] for _, _, body in told]
    signed = [(h, body) for _, h, body in told if "X-MLflow-Delivery-Id" in h]
    secret = os.environ["VAE_TEST_HOOK_SECRET"].encode()
    for h, body in signed:  # every MLflow call carries the HMAC of the secret `start --notify-secret-env` named
        text = f"{h['X-MLflow-Delivery-Id']}.{h['X-MLflow-Timestamp']}.{body.decode()}".encode()
        digest = hmac.new(secret, text, hashlib.sha256).digest()
        assert h["X-MLflow-Signature"] == "v1," + base64.b64encode(digest).decode()
    assert signed and {p for p, _, _ in told} == {"/hook"}


def heard_of(told: list) -> set[str]:
    """What the receiver was told: a new version of vae-signed (MLflow), a night waiting (Prefect)."""
    heard = set()
    for _, _headers, body in told:
        event = json.loads(body)
        if event.get("entity") == "model_version" and event.get("action") == "created":
            heard |= {"version created"} if event["data"].get("name") == "vae-signed" else set()
        if str(event.get("text", "")).startswith("vae: a night waits for a reviewer"):
            heard.add("sign-off waits")
    return heard


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


def test_a_worker_killed_mid_run_leaves_a_crashed_run_and_the_next_run_completes(stack, deployed, tmp_path):
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
    import torch

    [checkpoint] = work.glob("studies/*/trial-*/checkpoint.pt")
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
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
    # and it resumed the killed training (the README's claim), not started it again: its log says so, and the
    # registered version's curve goes on from the epoch the killed night's checkpoint had reached
    second_id = second.stdout.split("UUID: ")[1].split()[0]
    logs = subprocess.run([prefect, "flow-run", "logs", second_id], capture_output=True, text=True, env=client).stdout
    assert "trial 1 resumes the training of trial 0 (its worker died)" in logs, logs[-3000:]
    version = mlflow_get(stack[1], "/api/2.0/mlflow/registered-models/alias?name=vae-killed&alias=champion")
    run_id = version["model_version"]["run_id"]
    curve = mlflow_get(stack[1], f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=val_neg_elbo")
    steps = sorted(int(m["step"]) for m in curve["metrics"])
    assert steps and steps[0] == killed_at + 1 and 1 <= killed_at < 40, (killed_at, steps[:5])


def inspect(prefect: str, flow_run_id: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [prefect, "flow-run", "inspect", flow_run_id], capture_output=True, text=True, env=env, timeout=60
    ).stdout


def test_stop_ends_every_service_and_the_night_a_worker_is_running(tmp_path, stack, deployed):
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
