"""Nothing phones home, whichever entry point runs (`vae`, `python -m vae`, the flows): each calls
telemetry_off() before mlflow or prefect is imported (prefect reads its settings at import). A value the user
set wins. MLflow also stays quiet under pytest or CI variables, which is why the test of this runs without them."""

import os

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def telemetry_off() -> None:
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
