"""Secrets stay secret (issue 23): a password in a store's URL or a mirror's URL reaches the code that connects
through the environment, and appears in no process argument, log line, error, tag or record of the night;
password files are 0600 from their first byte."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from tests.helpers import free_port
from vae.errors import DownloadError, VAEError
from vae.redact import redact, redact_all

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    "text, shown",
    [
        (f"postgresql://vae:{SECRET}@127.0.0.1:5432/optuna", "postgresql://vae:***@127.0.0.1:5432/optuna"),
        (f"storage postgresql+psycopg2://u:{SECRET}@h/db failed", "storage postgresql+psycopg2://u:***@h/db failed"),
        (f"http://me:{SECRET}@mirror.example/mnist/ and more", "http://me:***@mirror.example/mnist/ and more"),
        (f"dbname=x password={SECRET} host=h", "dbname=x password=*** host=h"),
        ("sqlite:////tmp/a/optuna.db", "sqlite:////tmp/a/optuna.db"),  # nothing secret: unchanged
        ("http://127.0.0.1:5000/#/models", "http://127.0.0.1:5000/#/models"),
    ],
)
def test_redact_hides_passwords_and_leaves_the_rest(text, shown):
    assert redact(text) == shown
    assert redact_all({"a": [text, 5], "b": (text,)}) == {"a": [shown, 5], "b": [shown]}


def _cmdlines_during(fn, needle: str) -> tuple[object, list[str]]:
    """(what fn() returned or raised, the command lines of every process whose arguments held `needle`, seen
    while fn ran)."""
    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            for f in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    line = f.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if needle in line:
                    seen.add(line)
            done.wait(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out = fn()
    except VAEError as e:
        out = e
    finally:
        done.set()
        t.join()
    return out, sorted(seen)


def test_a_night_step_hands_its_stores_to_the_child_in_its_environment_not_its_arguments(tmp_path):
    from vae.night.params import PipelineParams
    from vae.night.steps import tune_step

    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    p = PipelineParams(subset=300, epochs=1, min_epochs=1, trials=1, storage=storage, tracking_uri=tracking,
                       workdir=str(tmp_path / "work"), model_name="vae-secrets")  # fmt: skip
    plan = {"target": 1, "study": "secrets-study-7d1f"}
    lines: list[str] = []
    summary, cmdlines = _cmdlines_during(lambda: tune_step(p, plan, "f" * 64, log=lines.append), plan["study"])
    assert isinstance(summary, dict) and summary["counts"]["complete"] == 1, summary  # it ran on those stores
    assert cmdlines and all(str(tmp_path / "optuna.db") not in c and "mlflow.db" not in c for c in cmdlines)
    assert summary["storage"] == storage  # the child used the storage it was given (no password to redact here)

    # With a password in the storage URL (a PostgreSQL that is not there: the child fails connecting to it)
    p = PipelineParams(subset=300, epochs=1, trials=1, workdir=str(tmp_path / "work"), tracking_uri=tracking,
                       storage=f"postgresql://vae:{SECRET}@127.0.0.1:{free_port()}/optuna")  # fmt: skip
    lines.clear()
    failed, cmdlines = _cmdlines_during(lambda: tune_step(p, plan, "f" * 64, log=lines.append), plan["study"])
    assert isinstance(failed, VAEError), failed
    assert lines and cmdlines and all(SECRET not in x for x in [*lines, *cmdlines, str(failed)])


def test_the_nights_tags_and_pipeline_json_show_no_password(tmp_path):
    from mlflow import MlflowClient

    from vae.night.params import PipelineParams
    from vae.night.steps import night_record_step

    url = f"postgresql://vae:{SECRET}@127.0.0.1:1/optuna"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    p = PipelineParams(storage=url, tracking_uri=tracking, model_name="vae-secrets", workdir=str(tmp_path))
    night = {"case": "failed", "reason": f"could not open the study storage {url}"}
    record = night_record_step(p, night, {"failure": f"OperationalError at {url}"}, failed=True)
    client = MlflowClient(tracking, tracking)
    run = client.get_run(record["run_id"])
    shown = json.dumps(run.data.tags) + Path(client.download_artifacts(run.info.run_id, "pipeline.json")).read_text()
    assert SECRET not in shown and "postgresql://vae:***@127.0.0.1:1/optuna" in shown
    assert run.data.tags["nightly.reason"] == "could not open the study storage postgresql://vae:***@127.0.0.1:1/optuna"


def test_a_mirror_password_is_in_no_log_line_nor_error(tmp_path, caplog, monkeypatch):
    from vae import data

    monkeypatch.setattr(data, "BACKOFF_S", 0.01)
    mirror = f"http://me:{SECRET}@127.0.0.1:{free_port()}/"  # nothing listens there
    with caplog.at_level("INFO"), pytest.raises(DownloadError) as err:
        data.fetch("mnist", tmp_path / "cache", mirror=mirror)
    assert "http://me:***@127.0.0.1" in str(err.value) and SECRET not in str(err.value)
    assert "downloading http://me:***@127.0.0.1" in caplog.text and SECRET not in caplog.text


def test_a_password_file_is_private_from_its_first_byte(tmp_path):
    from vae.credentials import private_file

    path = tmp_path / "pgpass"
    path.write_text("old")
    path.chmod(0o644)
    private_file(path, f"127.0.0.1:5432:*:vae:{SECRET}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().endswith(f"{SECRET}\n")


def test_tune_workers_get_the_stores_in_their_environment_not_their_arguments(tmp_path):
    """`vae tune --workers 2 --storage URL --tracking-uri URL`: the command typed holds the URLs (the user's
    own), the two workers it starts do not, and they still run the one study on those stores."""
    import subprocess
    import sys

    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    study = "secrets-workers-5e2a"
    argv = ["tune", "--workers", "2", "--trials", "2", "--epochs", "1", "--subset", "200", "--study", study]
    argv += ["--storage", storage, f"--tracking-uri={tracking}", "--json"]
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "vae", *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    done, cmdlines = _cmdlines_during(run, study)
    assert done.returncode == 0, done.stderr[-2000:]
    workers = [c for c in cmdlines if "--workers" not in c]
    assert workers, cmdlines  # the workers were seen (their two command lines are the same line)
    assert [c for c in workers if "optuna.db" in c or "mlflow.db" in c] == []
    assert json.loads(done.stdout.strip().splitlines()[-1])["trials"] == 2
