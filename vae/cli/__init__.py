"""`vae ...`: parse arguments, call the library, print the result as text or one JSON object.

Exit codes: 0 done; 2 bad usage or settings (one line on stderr, nothing written); 1 a run that started and
failed (divergence, a failed download), also one line. Commands' handlers live in vae/cli/{core,tune,
registry,uses,report}.py and are imported only when their command runs: they bring torch, mlflow or optuna,
which `vae --help` and `vae --version` do without.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

import vae
from vae.cli.args import add_core_commands, verbosity_args
from vae.cli.args_tune import add_registry_command, add_tune_command
from vae.cli.args_uses import add_uses_commands
from vae.errors import VAEError
from vae.lifetime import die_with_parent
from vae.telemetry import telemetry_off


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Variational autoencoders on 28x28 grey images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {vae.__version__}")
    verbosity_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_core_commands(sub)
    add_tune_command(sub)
    add_registry_command(sub)
    add_uses_commands(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path the parser accepts, e.g. ("train",), ("data", "fetch"): for help tests and docs."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                paths.append((*prefix, name))
                paths += subcommands(p, (*prefix, name))
    return paths


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str) -> None:
    """The package's loggers (vae.*) print their messages, bare, on stderr from `level` up; Optuna follows."""
    log = logging.getLogger("vae")
    log.setLevel(level)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print_result(handler, result: dict[str, Any], as_json: bool) -> None:
    """The one printer: one JSON object with --json, else the handler's own text (its `text` attribute), else
    `key: value` lines. Only rank 0 prints under torchrun."""
    if not is_rank0():
        return
    if as_json:
        print(json.dumps(result, default=str))
        return
    text = getattr(handler, "text", None)
    if text is not None:
        print(text(result))
        return
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"{k:>16}: {v}")


def main(argv: list[str] | None = None) -> int:
    telemetry_off()
    die_with_parent()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv  # re-used verbatim when `--nproc N` relaunches the command under torchrun
    configure_logging(a.log_level)
    module, name = a.handler.split(":")
    handler = getattr(importlib.import_module(module), name)
    try:
        result = handler(a)
    except VAEError as e:
        print(f"vae: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where a command turned it into one
        print(f"vae: interrupted ({a.command})", file=sys.stderr)
        return 130
    print_result(handler, result, getattr(a, "json", False))
    return 0
