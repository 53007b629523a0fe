"""The test harness itself: a server whose free port was taken before it could bind it is started again
on another port (tests/helpers.py start_server), instead of failing the test that needed it."""

import socket

import pytest

import tests.helpers as harness

# A real HTTP server on the port named by $PORT; exits at once (address in use) if it cannot bind it.
SERVE = (
    "import http.server, os; http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
    "http.server.SimpleHTTPRequestHandler).serve_forever()"
)


def test_a_server_that_cannot_bind_its_port_is_started_again_on_another(monkeypatch, tmp_path):
    taken = socket.socket()  # another process "took the free port" between free_port() and the bind
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    ports = iter([taken_port])
    real = harness.free_port
    monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or real())
    log = tmp_path / "server.log"
    try:
        proc, url = harness.start_server(["python", "-c", SERVE], health="/", port_env="PORT", timeout=30, log=log)
    finally:
        taken.close()
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{taken_port}")
        assert "Address already in use" in log.read_text()  # the first try failed to bind, the second served
        assert proc.poll() is None
    finally:
        harness.stop_server(proc)


def test_a_server_that_never_binds_fails_after_a_bounded_number_of_tries(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="did not start in 2 tries"):
        harness.start_server(
            ["python", "-c", "import sys; sys.exit('cannot bind')"],
            health="/",
            port_env="PORT",
            timeout=30,
            tries=2,
            log=log,
        )
    assert log.read_text().count("cannot bind") == 2
