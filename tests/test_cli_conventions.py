"""What users expect of a command line: --version, exit 2 for bad input and 1 for a run that failed, each
with one line; --log-level / -q through the logging module; one vocabulary across commands (MODEL, --data-dir
and --mirror, --split's choices, --noise-level, the data sets --dataset names)."""

import argparse
import socket

from tests.helpers import run_cli
from vae import __version__, data
from vae.cli import build_parser
from vae.cli.args import DOWNLOAD_FLAGS, SPLITS


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


# ---------------------------------------------------------------- one vocabulary across commands


def _leaves(parser, path=()):
    """(command path, parser) of every command that runs a handler."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


LEAVES = dict(_leaves(build_parser()))


def _options(parser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_the_walk_finds_the_commands():
    assert {"train", "evaluate", "sample", "data fetch", "tune", "denoise", "report", "serve"} <= set(LEAVES)


def test_every_command_loading_a_data_set_offers_data_dir_and_mirror_with_help():
    # registry's --dataset only names the model (vae-<dataset>); it loads no data
    loading = [c for c, p in LEAVES.items() if {"--dataset", "--split"} & set(_options(p)) and c[:8] != "registry"]
    assert len(loading) >= 10, loading
    for c in loading:
        opts = _options(LEAVES[c])
        for flag, (dest, text) in DOWNLOAD_FLAGS.items():
            assert flag in opts, f"vae {c} lacks {flag}"
            assert (opts[flag].dest, opts[flag].help) == (dest, text), f"vae {c} {flag} is declared its own way"


def test_every_dataset_help_names_every_kind_of_data_set():
    for c, p in LEAVES.items():
        if "--dataset" in _options(p):
            text = _options(p)["--dataset"].help
            for name in ("mnist-5k", "mnist", "fashion-mnist", "idx:PATH", "folder:PATH"):
                assert name in text, f"vae {c} --dataset: {text!r} omits {name}"


def test_every_split_offers_the_same_choices():
    assert SPLITS == data.SPLITS
    splits = {c: _options(p)["--split"].choices for c, p in LEAVES.items() if "--split" in _options(p)}
    assert len(splits) >= 6 and all(tuple(ch) == SPLITS for ch in splits.values()), splits
    r = run_cli("report", "runs/x", "--split", "validation", "--out", "x.html")
    assert r.returncode == 2 and "invalid choice: 'validation'" in r.stderr


def test_a_trained_model_is_the_positional_model_in_every_command():
    positionals = {
        c: [(a.dest, a.metavar) for a in p._actions if not a.option_strings and a.dest != "help"]
        for c, p in LEAVES.items()
    }
    takes = {c: pos for c, pos in positionals.items() if pos}
    assert {"evaluate", "sample", "reconstruct", "encode", "decode", "denoise", "report", "serve"} <= set(takes)
    assert all(pos == [("model", "MODEL")] for pos in takes.values()), takes


def test_no_command_shows_level_and_the_old_spelling_still_works(capsys):
    for c, p in LEAVES.items():
        shown = {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--level" not in shown, f"vae {c} --level: the flag is --noise-level, as in vae train"
    a = build_parser().parse_args(["denoise", "runs/x", "--level", "0.5"])
    assert a.noise_level == 0.5 and "--level is deprecated: use --noise-level" in capsys.readouterr().err
    assert build_parser().parse_args(["denoise", "runs/x"]).noise_level == 0.3
