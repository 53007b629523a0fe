"""Helpers the tests import: the CLI in a subprocess, free ports, live servers on 127.0.0.1."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def run_cli(*args, env=None, timeout=600):
    """`python -m vae ARGS` in a subprocess: the real exit code, stdout and stderr."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vae", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def start_server(cmd, health: str, env=None, port_env: str | None = None, timeout: float = 60):
    """Start a server on a free 127.0.0.1 port (via --port, or an environment variable) and wait until
    `health` answers 200. Returns (process, base URL)."""
    port = free_port()
    e = {**os.environ, **(env or {})}
    if port_env:
        e[port_env] = str(port)
    else:
        cmd = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    exe = Path(sys.executable).parent / cmd[0]
    proc = subprocess.Popen([str(exe), *cmd[1:]], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + health, timeout, proc)
    except BaseException:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc) -> None:
    """SIGTERM the server's whole process group, then SIGKILL what is left."""
    import subprocess
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
