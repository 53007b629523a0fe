import os
import sys
import time
from pathlib import Path

import pytest

# Nothing phones home from tests; set before any mlflow/prefect import.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's database, settings and cached task results of this test session stay out of ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    import tempfile
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="vae-tests-prefect-")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def _selects_gpu_explicitly(markexpr: str) -> bool:
    """True when `-m EXPR` asks for gpu tests by name: some set of markers holding `gpu` matches while the
    same set without `gpu` does not (so `-m gpu`, `-m "gpu or slow"`; not `-m "not slow"`, `-m "not gpu"`)."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression
    expr = Expression.compile(markexpr)

    def matches(names):
        return expr.evaluate(lambda name, /, **kwargs: name in names)
    return any(matches(others | {"gpu"}) and not matches(others) for others in (set(), {"slow"}))


def pytest_configure(config):
    # `pytest -m gpu` on a machine without CUDA must not pass by skipping everything.
    if _selects_gpu_explicitly(config.option.markexpr):
        import torch
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"-m {config.option.markexpr!r} selects the GPU tests, but no CUDA device is visible "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                "run them on a machine with a GPU, or drop -m gpu")


@pytest.fixture(scope="session")
def mnist5k():
    """The embedded 5,000 real MNIST digits, split 4000/500/500."""
    from vae.config import DataConfig
    from vae.data import load
    return load(DataConfig())


@pytest.fixture(scope="session")
def small_cfg():
    """The seed's model on 1,000 embedded digits: a few seconds per epoch budget."""
    from vae.config import Config, DataConfig, TrainConfig
    return Config(data=DataConfig(subset=1000), train=TrainConfig(epochs=2, batch_size=64, progress=False))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, small_cfg):
    """A VAE trained for 4 epochs on 1,000 digits, shared by the tests that need a fitted model."""
    from vae.training import fit
    out = tmp_path_factory.mktemp("trained")
    result = fit(small_cfg.replace(train={"epochs": 4}), out=out)
    return out, result


def run_cli(*args, env=None, timeout=600):
    """`python -m vae ARGS` in a subprocess: the real exit code, stdout and stderr."""
    import subprocess
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vae", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    import urllib.request
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


def start_server(cmd, health: str, env=None, port_env: str | None = None, timeout: float = 60, tries: int = 3,
                 log: Path | None = None):
    """Start a server on a free 127.0.0.1 port (via --port, or an environment variable) and wait until
    `health` answers 200. Returns (process, base URL).

    free_port() closes the port it found, so another process can take it before the server binds it: a
    server that exits before answering (or dies right after `health` answered, which then came from
    someone else) is started again on another port, `tries` times at most. env values of None remove
    the variable; `log` collects the server's output (its tail goes into the error)."""
    import subprocess
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
            proc = subprocess.Popen([str(exe), *full[1:]], env=e, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
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
    import signal
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
