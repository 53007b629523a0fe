"""A `vae` command as a child process of the pipeline: its stderr forwarded line by line, its JSON result read
back (last_json, which benchmarks use too), a timeout that ends it, and its life tied to this process
(vae/lifetime.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from vae.errors import VAEError
from vae.lifetime import PARENT_ENV

Log = Callable[[str], None]


class StepError(VAEError):
    """A pipeline step's subprocess failed; the message carries its last error line."""


def last_json(out: str) -> dict[str, Any]:
    """The result of a command run with --json: the JSON object on the last line of its stdout `out` that
    starts with '{' (lines before it may be anything). ValueError when no line does, or it is not JSON."""
    for line in reversed(out.splitlines()):
        if line.lstrip().startswith("{"):
            return json.loads(line)
    raise ValueError("no line of the output is a JSON object: " + (out.strip()[-300:] or "no output"))


def run_vae(args: list[str], log: Log = print, timeout: float | None = None) -> dict[str, Any]:
    """`python -m vae ARGS --json`: forwards its stderr lines to `log`, returns its JSON result. Stopped after
    `timeout` seconds: SIGTERM (torchrun passes it to its workers), SIGKILL 30 s later. The child stays in the
    night's process group, and gets SIGTERM when this process dies, even by SIGKILL (vae/lifetime.py): no
    orphan racing the next night."""
    cmd = [sys.executable, "-m", "vae", *args, "--json"]
    log("$ " + " ".join(cmd[2:]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}  # dies with this process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    timers = [threading.Timer(timeout, proc.terminate), threading.Timer(timeout + 30, proc.kill)] if timeout else []
    for t in timers:
        t.daemon = True
        t.start()
    try:
        return _collect(proc, args, log, timeout)
    finally:
        for t in timers:
            t.cancel()


def _collect(proc: subprocess.Popen, args: list[str], log: Log, timeout: float | None) -> dict[str, Any]:
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        line = line.rstrip()
        if line:
            log(line)
            tail = (tail + [line])[-20:]
    out = proc.stdout.read() if proc.stdout else ""
    if proc.wait() in (-9, -15) and timeout:
        raise StepError(f"`vae {args[0]}` was killed after its timeout of {timeout:g} s (task_timeout)")
    if proc.returncode != 0:
        last = next((x for x in reversed(tail) if "error" in x.lower()), tail[-1] if tail else "no output")
        raise StepError(f"`vae {args[0]}` exited with {proc.returncode}: {last}")
    try:
        return last_json(out)
    except ValueError:
        raise StepError(f"`vae {args[0]}` printed no JSON result") from None
