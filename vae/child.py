"""A `vae` command as a child process of the pipeline: its stderr forwarded line by line, its JSON result read
back (last_json, which benchmarks use too), a timeout that ends its whole process tree, and its life tied to
this process (vae/lifetime.py)."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from vae.errors import ResumableError, VAEError
from vae.lifetime import PARENT_ENV, end_tree
from vae.redact import redact

Log = Callable[[str], None]


class StepError(VAEError):
    """A pipeline step's subprocess failed; the message carries its last error line."""


class ChildFailed(StepError, ResumableError):
    """The subprocess started and exited non-zero, though not with 2 (bad input: running it again cannot help)."""


def last_json(out: str) -> dict[str, Any]:
    """The result of a command run with --json: the JSON object on the last line of its stdout `out` that
    starts with '{' (lines before it may be anything). ValueError when no line does, or it is not JSON."""
    for line in reversed(out.splitlines()):
        if line.lstrip().startswith("{"):
            return json.loads(line)
    raise ValueError("no line of the output is a JSON object: " + (out.strip()[-300:] or "no output"))


KILL_GRACE = 30.0  # seconds between the SIGTERM of a timeout and the SIGKILL of what is left


def run_vae(
    args: list[str], log: Log = print, timeout: float | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`python -m vae ARGS --json`: forwards its stderr lines to `log` (passwords redacted), returns its JSON
    result. `env`: variables for the child only, the way to hand it a URL with a password (a command line is
    readable by every local user). The child gets SIGTERM when this process dies, even by SIGKILL
    (vae/lifetime.py): no orphan racing the next night."""
    cmd = [sys.executable, "-m", "vae", *args, "--json"]
    log("$ " + redact(" ".join(cmd[2:])))
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}  # dies with this
    out = run_child(cmd, env, log, timeout, name=f"vae {args[0]}")
    try:
        return last_json(out)
    except ValueError:
        raise StepError(f"`vae {args[0]}` printed no JSON result") from None


def run_child(
    cmd: list[str], env: dict[str, str], log: Log, timeout: float | None, name: str, grace: float = KILL_GRACE
) -> str:
    """Run `cmd`, forward its stderr lines to `log`, return its stdout. Both pipes are read at once, so a child
    that writes more than a pipe holds (64 KiB) to either never blocks. After `timeout` seconds, or when this
    call is interrupted, the whole process tree ends (lifetime.end_tree: torchrun's ranks too, which run in
    sessions of their own), SIGKILL `grace` seconds after SIGTERM. StepError when it fails or times out."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tail: list[str] = []
    out: list[str] = []
    readers = [
        # in a copy of this context: a Prefect task's run logger is found through context variables
        threading.Thread(target=contextvars.copy_context().run, args=(_forward, proc.stderr, log, tail), daemon=True),
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        end_tree(proc.pid, grace)
        proc.wait()
        raise StepError(f"`{name}` was stopped after its timeout of {timeout:g} s (task_timeout)") from None
    except BaseException:  # KeyboardInterrupt, a cancelled task: nothing of it may go on running
        end_tree(proc.pid, grace)
        raise
    for r in readers:  # a grandchild that outlived the child may hold a pipe open: do not wait on it forever
        r.join(timeout=10)
    if code != 0:
        last = next((x for x in reversed(tail) if "error" in x.lower()), tail[-1] if tail else "no output")
        raise (StepError if code == 2 else ChildFailed)(f"`{name}` exited with {code}: {last}")
    return out[0] if out else ""


def _forward(stream: IO[str], log: Log, tail: list[str]) -> None:
    for line in stream:
        line = redact(line.rstrip())
        if line:
            log(line)
            tail[:] = (tail + [line])[-20:]
