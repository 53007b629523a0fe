"""The Prefect flows. Importing the package turns telemetry off first (vae/telemetry.py): prefect reads its
settings when it is imported, by flows.pipeline and flows.deploy."""

from vae.telemetry import telemetry_off

telemetry_off()
