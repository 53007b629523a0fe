"""Being told: MLflow webhooks that announce a new version and every alias move (champion, challenger) to a
URL, configured once per registry. MLflow's server sends them (they need its SQL store; a local store sends
none): point `vae registry notify --url` at the server's tracking URI. The receiver gets MLflow's JSON
payload (entity, action, the model's name, version and alias), signed with HMAC-SHA256 when a secret is
given (header X-MLflow-Signature), so it can tell the registry's calls from anyone's.

A webhook to a plain-http or private address (a receiver on 127.0.0.1, as the tests use) is refused by the
server unless it runs with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true;
a real channel (Slack's incoming webhooks, a chat bot, an incident tool) is an https URL and needs neither.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vae.errors import ConfigError

NAME = "vae-registry"
EVENTS = ("model_version.created", "model_version_alias.created", "model_version_alias.deleted")


def ensure_webhook(tracking_uri: str, url: str, secret: str | None = None) -> dict[str, Any]:
    """The registry's webhook NAME for EVENTS, sending to `url`: created, or updated in place when it exists
    (a second call with another URL moves it, it does not add one)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} is invalid: expected an http(s) URL such as https://hooks.example/vae")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        existing = next((w for w in client.list_webhooks() if w.name == NAME), None)
        if existing is None:
            about = "vae: new versions and alias moves"
            hook = client.create_webhook(NAME, url, list(EVENTS), description=about, secret=secret)
        else:
            hook = client.update_webhook(existing.webhook_id, url=url, events=list(EVENTS), secret=secret)
    except MlflowException as e:
        raise ConfigError(f"the registry at {tracking_uri} refused the webhook: {e.message}") from None
    return {"webhook_id": hook.webhook_id, "name": hook.name, "url": hook.url, "events": [str(x) for x in hook.events]}
