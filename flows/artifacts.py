"""What a night leaves in Prefect besides its logs: the summary of this night (Markdown, key
`vae-pipeline-summary`), the table of the model's nights (key `nights-<model>`: each night's case, version,
decision and numbers, the previous nights' rows carried over, so the newest version of the artifact is the
history and the artifact's own history holds every earlier one), and a link to the registered version's page
in the MLflow UI where the store is a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import Artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

from vae import summaries


def previous_rows(key: str) -> list[dict[str, Any]]:
    """The rows of the latest table under `key` (none before the first night, or if it is not a table)."""
    latest = Artifact.get(key)
    if latest is None:
        return []
    data = json.loads(latest.data) if isinstance(latest.data, str) else latest.data
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def publish(
    name: str,
    night: dict,
    record: dict,
    markdown: str,
    description: str,
    metrics: dict | None = None,
    registered: dict | None = None,
    decision: dict | None = None,
) -> None:
    """The night's summary, its row in the nights table, and the link to the version it registered."""
    create_markdown_artifact(markdown, key="vae-pipeline-summary", description=description)
    key = summaries.nights_key(name)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    row = summaries.night_row(night, record, metrics, registered, decision, when)
    create_table_artifact(
        summaries.nights_table(previous_rows(key), row), key=key, description=f"the nights of {name}, newest last"
    )
    if registered and (link := summaries.version_link(registered["tracking_uri"], name, registered["version"])):
        create_link_artifact(link, link_text=f"{name} v{registered['version']}", key=f"{key}-registered",
                             description="the version this night registered, in the MLflow UI")  # fmt: skip
