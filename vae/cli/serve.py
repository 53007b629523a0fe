"""`vae serve MODEL`: the REST server of a model (MLflow's scoring server behind vae/tracking/rest.py's guard)."""

from __future__ import annotations

import argparse
from typing import Any

from vae.errors import ConfigError
from vae.tracking.models import serve


def cmd_serve(a: argparse.Namespace) -> dict[str, Any]:
    if not 0 < a.port < 65536:
        raise ConfigError(f"port={a.port} is invalid: expected 1-65535")
    code = serve(a.model, a.host, a.port, a.tracking_uri)
    if code not in (0, -15, 143):  # stopped by SIGTERM is a normal end
        raise SystemExit(code)
    return {"model": a.model, "exit": code}
