import argparse
import importlib
import json

import numpy as np
import pytest

from tests.helpers import run_cli
from vae.cli import build_parser, main, subcommands


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--dataset", "cifar"],
            "dataset='cifar' is invalid: expected one of mnist-5k, mnist, fashion-mnist, idx:PATH or folder:PATH",
        ),
        (["train", "--lr", "-0.001"], "lr=-0.001 is invalid: expected a number in (0, 10]"),
        (["train", "--latent", "0"], "latent=0 is invalid: expected an integer from 1 to 4096"),
        (["train", "--model", "gan"], "model='gan' is invalid"),
        (["train", "--noise", "pink"], "noise='pink' is invalid"),
        (["train", "--nproc", "0"], "nproc=0 is invalid"),
        (["train", "--dataset", "idx:/no/such/folder"], "/no/such/folder"),
        (["evaluate", "/no/such/run"], "checkpoint /no/such/run does not exist"),
        (["sample", "/no/such/run", "--out", "x.gif"], "expected a .png (image grid) or .npy (array) file name"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae: error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_idx_file_is_named_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / name).write_bytes(b"\x00\x00\x08\x03garbage")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", f"idx:{folder}", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "idx3-ubyte" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_the_real_process_exits_2(tmp_path):
    r = run_cli("train", "--latent", "0", "--out", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.startswith("vae: error: latent=0")
    assert not (tmp_path / "run").exists()


def _commands(parser, path=()):
    """Every command path of an argparse parser, found by walking its sub-parsers: [], [train], [data, fetch], ..."""
    yield list(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _all_commands():
    return list(_commands(build_parser()))


ALL_COMMANDS = _all_commands()


def test_the_help_walk_finds_every_command():
    # the discovery below must not silently find nothing: these are the commands the README lists
    found = {" ".join(c) for c in ALL_COMMANDS}
    assert {
        "",
        "train",
        "evaluate",
        "sample",
        "data",
        "data fetch",
        "data info",
        "tune",
        "registry",
        "registry list",
        "registry promote",
        "registry rollback",
        "reconstruct",
        "encode",
        "decode",
        "denoise",
        "augment",
        "anomaly",
        "report",
    } <= found, found
    assert {" ".join(c) for c in subcommands(build_parser())} <= found  # the package's own walk agrees


def test_every_command_names_a_handler_that_exists():
    leaves = []

    def walk(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves.append((path, parser.get_default("handler")))
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, (*path, name))

    walk(build_parser())
    assert len(leaves) >= 16
    for path, handler in leaves:
        module, name = handler.split(":")
        assert callable(getattr(importlib.import_module(module), name)), path


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: " ".join(c) or "vae")
def test_help_for_every_command(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(" ".join(["usage: vae", *cmd])), out[:200]
    assert "-h, --help" in out


def test_train_evaluate_sample_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--subset", "500", "--epochs", "2", "--out", str(out), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 2 and summary["metrics"]["val_neg_elbo"] > 0
    assert json.loads((out / "history.json").read_text())["history"][1]["epoch"] == 2

    assert main(["evaluate", str(out), "--iw-samples", "20", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["iw_nll"] < m["neg_elbo"] and m["fingerprint"] == summary["fingerprint"]
    assert (out / "figures" / "samples.png").exists()

    assert main(["sample", str(out), "--n", "10", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (10, 28, 28) and s.min() >= 0 and s.max() <= 1
    assert main(["sample", str(out), "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_data_info_reports_splits_and_fingerprint(capsys):
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "mnist-5k"
    assert len(info["fingerprint"]) == 64
