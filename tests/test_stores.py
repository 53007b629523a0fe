"""Store URLs and file locks (vae/stores.py), shared by the MLflow and the Optuna side."""

import subprocess
import sys

import pytest

from vae.stores import file_lock, journal_path, redact, sqlite_path


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://vae:s3cret@127.0.0.1:5432/vae", "postgresql://vae:***@127.0.0.1:5432/vae"),
        ("postgresql+psycopg://vae:p%40ss%3Aw@db.example/vae", "postgresql+psycopg://vae:***@db.example/vae"),
        ("postgresql://vae:p@ss:w@rd@127.0.0.1/vae", "postgresql://vae:***@127.0.0.1/vae"),  # raw '@' and ':'
        ("sqlite:////tmp/mlruns/optuna.db", "sqlite:////tmp/mlruns/optuna.db"),
        ("journal:/tmp/study.log", "journal:/tmp/study.log"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_redact_hides_the_whole_password(url, shown):
    assert redact(url) == shown
    for secret in ("s3cret", "p%40ss", "p@ss", "w@rd"):
        assert secret not in redact(url)


def test_store_paths():
    assert str(sqlite_path("sqlite:////tmp/a/b.db")) == "/tmp/a/b.db"
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("postgresql://h/db") is None
    assert str(journal_path("journal:/tmp/j.log")) == "/tmp/j.log" and journal_path("sqlite:////x") is None


def test_file_lock_excludes_another_process(tmp_path):
    lock, released = tmp_path / "sub" / "x.lock", tmp_path / "released"
    holder = (
        "import sys, time\nfrom vae.stores import file_lock\n"
        f"with file_lock({str(lock)!r}):\n    print('held', flush=True)\n    time.sleep(1.5)\n"
        f"    open({str(released)!r}, 'w').close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with file_lock(lock):  # waits for the other process to let go: it wrote `released` while still holding it
        assert released.exists()
    proc.wait(timeout=30)


def test_a_champion_lock_for_a_remote_server_without_postgresql_warns_it_is_this_hosts_only(
    tmp_path, monkeypatch, caplog
):
    from vae.stores import champion_lock

    for name in ("VAE_LOCK_URL", "VAE_OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # the host-local lock's folder, ~/.cache/vae/locks
    with caplog.at_level("WARNING", logger="vae.stores"):
        with champion_lock("vae-m", "http://me:secret@127.0.0.1:5000") as kind:
            assert kind.startswith(f"file lock {tmp_path}/.cache/vae/locks/"), kind
        assert "this host's only" in caplog.text and "set VAE_LOCK_URL" in caplog.text
        assert "secret" not in caplog.text and "http://me:***@127.0.0.1:5000" in caplog.text
        caplog.clear()
        with champion_lock("vae-m", f"sqlite:///{tmp_path}/mlflow.db"):  # one host, as SQLite itself
            pass
        assert caplog.text == ""
