"""Helpers the tests import: the CLI in a subprocess, free ports, live servers on 127.0.0.1."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _pytest.mark.expression import Expression


def run_cli(*args, env=None, timeout=600):
    """`python -m vae ARGS` in a subprocess: the real exit code, stdout and stderr."""
    e = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vae", *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout
    )


def communicate_all(procs, timeout: float) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process, read at the same time: read one after another, a process that
    fills its pipe while the test waits on another blocks, and if that other waits for it (a shared lock, a
    rendezvous), both hang until the timeout."""
    from concurrent.futures import ThreadPoolExecutor

    def read(proc):
        try:
            return proc.communicate(timeout=timeout), False
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate(), True

    with ThreadPoolExecutor(len(procs)) as pool:
        results = list(pool.map(read, procs))
    if any(late for _, late in results):  # what each process said, for the one that hung and the others
        tails = "\n".join(
            f"process {i}: {'timed out' if late else f'exit {procs[i].returncode}'}:\n{out[1][-1500:]}"
            for i, (out, late) in enumerate(results)
        )
        raise AssertionError(f"a process ran past {timeout} s:\n{tails}")
    return [out for out, _ in results]


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


def start_server(
    cmd,
    health: str,
    env=None,
    port_env: str | None = None,
    timeout: float = 60,
    tries: int = 3,
    log: Path | None = None,
):
    """Start a server on a free 127.0.0.1 port (via --port, or an environment variable) and wait until
    `health` answers 200. Returns (process, base URL).

    free_port() closes the port it found, so another process can take it before the server binds it: a
    server that exits before answering (or dies right after `health` answered, which then came from
    someone else) is started again on another port, `tries` times at most. env values of None remove
    the variable; `log` collects the server's output (its tail goes into the error)."""
    failures = []
    for _ in range(tries):
        port = free_port()
        e = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
        full = list(cmd)
        if port_env:
            e[port_env] = str(port)
        else:
            full += ["--host", "127.0.0.1", "--port", str(port)]
        exe = Path(sys.executable).parent / full[0]
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                [str(exe), *full[1:]], env=e, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if log is not None:
                out.close()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + health, timeout, proc)
            time.sleep(0.2)
            if proc.poll() is None:
                return proc, url
            failures.append(f"port {port}: exited with {proc.returncode} just after {health} answered")
        except RuntimeError as err:  # exited before answering: most likely the port was taken
            failures.append(f"port {port}: {err}")
        except BaseException:
            stop_server(proc)
            raise
        stop_server(proc)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{cmd[0]} did not start in {tries} tries: {'; '.join(failures)}\n{tail}")


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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def selects_gpu_explicitly(markexpr: str) -> bool:
    """True when `-m EXPR` asks for gpu tests by name: some set of markers holding `gpu` matches while the
    same set without `gpu` does not (so `-m gpu`, `-m "gpu or slow"`; not `-m "not slow"`, `-m "not gpu"`)."""
    if not markexpr:
        return False
    expr = Expression.compile(markexpr)

    def matches(names):
        return expr.evaluate(lambda name, /, **kwargs: name in names)

    return any(matches(others | {"gpu"}) and not matches(others) for others in (set(), {"slow"}))


@contextlib.contextmanager
def webhook_receiver():
    """A receiver of webhook calls on 127.0.0.1: yields (its base URL, the list of (path, headers, body) of
    each POST it was sent, in order)."""
    import http.server

    got: list[tuple[str, dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

    server, url = threaded_server(Handler)
    try:
        yield url.rstrip("/"), got
    finally:
        server.shutdown()
        server.server_close()


def threaded_server(handler):
    """An HTTP server of `handler` on a free 127.0.0.1 port, served by a daemon thread that notices a
    shutdown() within 0.05 s: (the server, its base URL with a trailing /)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@contextlib.contextmanager
def throwaway_postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 with a database `optuna` that user `vae` reaches without a
    password (as the `postgres` user when running as root): yields its URL; skips without the binaries."""
    import shutil
    import tempfile

    import pytest

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
            "`apt-get install postgresql` (.ci/run does)"
        )
    bindir = found[-1].parent
    pytest.importorskip("psycopg", reason="SQLAlchemy's PostgreSQL driver is missing: pip install 'psycopg[binary]'")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="vae-pg-"))
    if as_user:
        shutil.chown(home, "postgres")
    data = home / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "vae"], check=True, capture_output=True
    )
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    for _attempt in range(3):  # the free port can be taken before postgres binds it: then another port
        port = free_port()
        started = subprocess.run(
            [*ctl, "-l", str(home / "log"), "-w", "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
            capture_output=True,
        )
        if started.returncode == 0:
            break
    else:
        raise RuntimeError(f"postgres did not start in 3 tries: {(home / 'log').read_text()[-2000:]}")
    try:
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "vae", "optuna"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://vae@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def prefect_api(url: str, path: str, body=None, tries: int = 5):
    """One call of the Prefect REST API; a 503 (the server busy, seen in CI under load) is tried again, as
    Prefect's own client does."""
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(req) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == tries - 1:
                raise
            time.sleep(2 * (attempt + 1))
