"""The REST server `vae serve` runs: MLflow's scoring server app (mlflow.pyfunc.scoring_server.init, the app
`mlflow models serve` hands to uvicorn) behind a small ASGI guard, run by uvicorn from this interpreter.

The guard reads each request body itself, up to MAX_BODY_BYTES: a longer one (by Content-Length, or as it
streams in) gets 413 before MLflow buffers it. A POST without a Content-Type gets 415. What MLflow's app
raises instead of answering (a body nested too deeply for Python's JSON parser: RecursionError; a number with
more digits than int() takes: ValueError) becomes a 400 naming the problem, not a 500. Every 4xx answer is
JSON {"error_code", "message"} with one line of message: MLflow's echo of the input data and its stack traces
are cut (the traces go to the server's log). Anything else passes through unchanged.

`mlflow models serve` on the same model runs MLflow's app without this guard: the model's own checks (the
`sample` cap, the input checks in vae/tracking/models.py) apply there too, the body limit and the 400s for
unparsable bodies do not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys

from vae.telemetry import telemetry_off

MAX_BODY_BYTES = 32 * 2**20  # ~5,400 MNIST images as json.dumps writes float32 pixels (6.1 kB a row)
MODEL_ENV = "VAE_SERVE_MODEL"  # what app() loads: a model URI or an MLflow model folder
MAX_MESSAGE = 1000
DRAIN_FACTOR = 4
EXPECTED = 'expected JSON {"inputs": [[784 pixels in [0, 1]], ...], "params": {"op": "encode"}}'
# What MLflow's app raises (rather than answers) on a body it cannot read.
UNREADABLE = (RecursionError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)

_log = logging.getLogger("uvicorn.error")


def command(host: str, port: int) -> list[str]:
    """The server, with the model named by $VAE_SERVE_MODEL: uvicorn from this interpreter (no PATH needed)."""
    return [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:app", "--host", host, "--port", str(port)]


def app():
    """The ASGI app uvicorn runs (`--factory`): MLflow's scoring server for $VAE_SERVE_MODEL, guarded."""
    telemetry_off()
    from mlflow.pyfunc import scoring_server

    return Guard(scoring_server.init(scoring_server.load_model_with_mlflow_config(os.environ[MODEL_ENV])))


class Guard:
    """An ASGI middleware: the body limit, and clear 4xx answers for bodies MLflow's app cannot read."""

    def __init__(self, inner, max_bytes: int = MAX_BODY_BYTES):
        self.inner, self.max_bytes = inner, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            if headers.get("expect", "").lower() != "100-continue":  # it is coming anyway: see _drain
                await self._drain(receive)
            return await answer(send, 413, "REQUEST_TOO_LARGE", self._too_large(f"{int(declared)} bytes"))
        body = await self._read(receive)
        if body is None:  # the client went away
            return
        if len(body) > self.max_bytes:
            await self._drain(receive)
            return await answer(send, 413, "REQUEST_TOO_LARGE", self._too_large(f"more than {self.max_bytes} bytes"))
        if scope["method"] == "POST" and "content-type" not in headers:
            return await answer(send, 415, "BAD_REQUEST", "the request has no Content-Type: send application/json")
        await self._forward(scope, body, receive, send)

    def _too_large(self, size: str) -> str:
        return (
            f"the request body is {size}: the limit is {self.max_bytes} bytes ({self.max_bytes // 2**20} MiB); "
            "send fewer images per request"
        )

    async def _read(self, receive) -> bytes | None:
        """The whole body, or its first max_bytes + 1 bytes when it is longer; None if the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _drain(self, receive) -> None:
        """Read and drop the rest of a refused body, DRAIN_FACTOR times the limit at most: a client that sends
        all of it before reading the answer (and asked to close the connection after it) would otherwise find
        the connection reset, and never see the 413."""
        left = DRAIN_FACTOR * self.max_bytes
        while left > 0:
            message = await receive()
            left -= len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def _forward(self, scope, body: bytes, receive, send) -> None:
        """The inner app on the body read; its 4xx and 5xx answers are held back until it has finished."""
        replayed = False
        held: list[dict] = []
        passed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def hold(message):
            nonlocal passed
            if held or (message["type"] == "http.response.start" and message["status"] >= 400):
                held.append(message)
                return
            passed = True
            await send(message)

        try:
            await self.inner(scope, replay, hold)
        except UNREADABLE as e:
            if passed:
                raise
            _log.warning("unreadable request body: %s: %s", type(e).__name__, str(e)[:300])
            return await answer(send, 400, "BAD_REQUEST", unreadable(e))
        except Exception:
            await replay_held(send, held)
            raise
        if held and held[0]["status"] < 500:
            return await answer(send, held[0]["status"], *error_of(held))
        await replay_held(send, held)


def unreadable(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return f"the request body is nested too deeply to parse: {EXPECTED}, 3 levels deep"
    return f"the request body cannot be read ({type(e).__name__}: {one_line(str(e))[:300]}): {EXPECTED}"


def error_of(held: list[dict]) -> tuple[str, str]:
    """(error_code, one-line message) of a held 4xx answer, JSON from MLflow or plain text."""
    text = b"".join(m.get("body", b"") for m in held[1:]).decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return "BAD_REQUEST", clean(text)
    if parsed.get("stack_trace"):
        _log.warning("request refused: %s\n%s", clean(str(parsed.get("message", ""))), parsed["stack_trace"])
    return str(parsed.get("error_code", "BAD_REQUEST")), clean(str(parsed.get("message", text)))


def clean(message: str) -> str:
    """MLflow's message without the data it echoes ("Failed to predict data '...'", "Input: ...")."""
    message = re.sub(r"^Failed to predict data '.*?'\. \nError: ", "", message, flags=re.S)
    message = re.sub(r" of data '.*?' with schema ", " ", message, flags=re.S)
    message = message.split("\nInput: ", 1)[0]
    message = one_line(message)
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def one_line(text: str) -> str:
    return " ".join(text.split())


async def replay_held(send, held: list[dict]) -> None:
    for message in held:
        await send(message)


async def answer(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
