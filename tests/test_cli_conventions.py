"""What users expect of a command line: --version, exit 2 for bad input and 1 for a run that failed, each
with one line; --log-level / -q through the logging module."""

import socket

from tests.helpers import run_cli
from vae import __version__


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vae {__version__}"


def test_a_failed_download_exits_1_with_one_line_and_leaves_no_cache(tmp_path):
    with socket.socket() as s:  # a port where nothing listens: every mirror refuses
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    r = run_cli(
        "data",
        "fetch",
        "--dataset",
        "mnist",
        "--mirror",
        dead,
        "--data-dir",
        tmp_path / "cache",
        "-q",
        env={"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"},
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("vae: error: could not download") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_bad_input_exits_2(tmp_path):
    r = run_cli("train", "--epochs", "0", "--out", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.strip() == "vae: error: epochs=0 is invalid: expected an integer >= 1"


def test_quiet_and_log_level_before_or_after_the_command(tmp_path):
    loud = run_cli("train", "--subset", "100", "--epochs", "1", "--out", tmp_path / "a")
    assert loud.returncode == 0 and "epoch 1/1" in loud.stderr and "done: 1 epoch(s)" in loud.stderr
    for args in (["-q", "train"], ["train", "--log-level", "warning"]):
        r = run_cli(*args, "--subset", "100", "--epochs", "1", "--out", tmp_path / "-".join(args))
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
