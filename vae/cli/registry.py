"""`vae registry list|promote|rollback|notify`: the MLflow registry by hand (the pipeline does the same steps)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vae.cli.common import shows
from vae.errors import ConfigError
from vae.tracking import identity, notify, registry
from vae.tracking.store import tracking_uri


def _text(r: dict[str, Any]) -> str:
    if "versions" in r:
        lines = [f"{'version':>7}  {'aliases':<20} {'test -ELBO':>10}  {'decision':<9} fingerprint"]
        for v in r["versions"]:
            value = f"{v['test_neg_elbo']:.3f}" if v["test_neg_elbo"] is not None else "-"
            lines.append(
                f"{v['version']:>7}  {','.join(v['aliases']) or '-':<20} {value:>10}  "
                f"{v['decision'] or '-':<9} {v['fingerprint'][:12]}"
            )
        return "\n".join(lines)
    if "webhook_id" in r:
        return f"webhook {r['name']} ({r['webhook_id']}): {', '.join(r['events'])} -> {r['url']}"
    if "rolled_back" in r:
        return f"{r['name']}: champion is v{r['champion']} again (v{r['rolled_back']} rolled back)"
    return f"{r['name']} v{r['candidate']}: {'promoted to champion' if r['promote'] else 'not promoted'}: {r['reason']}"


@shows(_text)
def cmd_registry(a: argparse.Namespace) -> dict[str, Any]:
    uri = tracking_uri(a.tracking_uri)
    name = a.name or identity.model_name(a.dataset)
    if a.action == "list":
        return {"name": name, "versions": registry.list_versions(uri, name)}
    if a.action == "notify":
        if not a.url:
            raise ConfigError("registry notify needs --url URL (or $VAE_NOTIFY_URL): the receiver of the calls")
        secret = os.environ.get(a.secret_env) if a.secret_env else None
        if a.secret_env and not secret:
            raise ConfigError(f"--secret-env {a.secret_env}: that environment variable is not set or empty")
        return notify.ensure_webhook(uri, a.url, secret)
    if a.action == "promote":
        return {"name": name, **registry.promote(uri, name, a.version, a.min_improvement, force=a.force).as_dict()}
    return registry.rollback(uri, name)
