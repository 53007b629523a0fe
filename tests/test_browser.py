"""What a reviewer sees in the MLflow UI, checked in a real browser: headless Chromium on a live `mlflow server`
renders the page of a `vae train --tracking-uri` run, and the page shows its metrics and its data set.

Needs Debian's chromium (.ci/run installs it); skips with the reason without it."""

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request

import pytest

from tests.helpers import run_cli, start_server, stop_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered(url: str, expect: str = "", tries: int = 4) -> str:
    """The page's DOM after its scripts ran; rendered again, up to `tries` times and with twice the virtual time
    each try (30 s, 60 s, ...), while the pattern `expect` is not in it: a first start of the UI can answer before
    its data, and on a loaded machine the lazily loaded chart library can miss the first budget (CI, stop 27)."""
    for attempt in range(tries):
        page = _dump(url, budget_ms=30000 * 2**attempt)
        if re.search(expect, page, re.S):
            break
    return page


def _dump(url: str, budget_ms: int) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            + ["--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}"]
            + ["--window-size=1400,1000", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not found (apt-get install chromium; .ci/run installs it)")
    home = tmp_path_factory.mktemp("mlflow-ui")
    cmd = ["mlflow", "server", "--workers", "1", "--backend-store-uri", f"sqlite:///{home}/mlflow.db"]
    cmd += ["--artifacts-destination", str(home / "artifacts")]
    proc, url = start_server(cmd, "/health", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log=home / "log")
    yield url, home
    stop_server(proc)


def test_the_training_runs_page_shows_its_metrics_and_its_data_set(server):
    url, home = server
    args = ["train", "--subset", "300", "--epochs", "3", "--tracking-uri", url, "--out", home / "run"]
    # a system-metrics sample each second: the default 5 s can outlast so short a run, which then has none
    r = run_cli(*args, "--no-progress", "--json", env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = json.loads(r.stdout.strip().splitlines()[-1])["mlflow_run_id"]
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}") as resp:
        run = json.loads(resp.read())["run"]
    page = f"{url}/#/experiments/{run['info']['experiment_id']}/runs/{run_id}"
    overview = rendered(page, "val_neg_elbo.*mnist-5k|mnist-5k.*val_neg_elbo")
    assert "val_neg_elbo" in overview and "train_loss" in overview  # the metrics, by name
    assert "mnist-5k" in overview  # the dataset input
    curves = [m["key"] for m in run["data"]["metrics"] if not m["key"].startswith("system/")]
    assert len(curves) >= 5 and len(curves) < len(run["data"]["metrics"])  # and system metrics beside them
    count = rf"Model metrics</div>.{{0,200}}\({len(curves)}\)"
    assert re.search(count, rendered(page + "/model-metrics", count), re.S)
    drawn = 'class="main-svg.*cpu_utilization_percentage|cpu_utilization_percentage.*class="main-svg'
    system = rendered(page + "/system-metrics", drawn)  # drawn charts (plotly SVG) of CPU and memory
    assert 'class="main-svg' in system and "cpu_utilization_percentage" in system
