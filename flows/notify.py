"""Being told, on the Prefect side: automations that call a URL when a night fails or crashes, when a night
waits for a reviewer's sign-off, and when the weekly re-evaluation finds the champion drifted (the event
vae.champion.drifted). The URL is kept in a Webhook block, `vae-notify`; the message is JSON with a `text`
field (what chat incoming-webhooks show) naming the event, the run or model, and its page.

    python -m flows.notify --url https://hooks.example/vae     # against $PREFECT_API_URL, once
    VAE_NOTIFY_URL=https://hooks.example/vae python -m flows.notify   # the URL off the command line

Run it again to move the URL: the block and the automations are updated in place, never duplicated.
The registry's own events (a new version, champion moved) come from MLflow: `vae registry notify`.
"""

from __future__ import annotations

import argparse
import os
import sys

from prefect.automations import Automation, CallWebhook, EventTrigger, Posture, ResourceSpecification
from prefect.blocks.webhook import Webhook

from vae.telemetry import telemetry_off

BLOCK = "vae-notify"
FLOW = "vae-pipeline"
TEXT = '{"text": "vae: %s: {{ event.resource.name }} ({{ event.event }}, {{ event.occurred }})"}'
WHEN = {
    "vae: a night failed": ({"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}, "prefect.flow-run.*", "failed"),
    "vae: a sign-off is waiting": ({"prefect.flow-run.Paused", "prefect.flow-run.Suspended"}, "prefect.flow-run.*",
                                   "a night waits for a reviewer (python -m flows.signoff)"),
    "vae: the champion drifted": ({"vae.champion.drifted"}, "vae.model.*", "the champion drifted from its record"),
}  # fmt: skip


def ensure_automations(url: str, allow_private: bool = False) -> dict[str, str]:
    """The Webhook block and one automation per entry of WHEN, created or updated; {automation name: id}.
    `allow_private`: let the server call a private address (a receiver on 127.0.0.1: tests, a local relay)."""
    block = Webhook(
        url=url, method="POST", headers={"Content-Type": "application/json"}, allow_private_urls=allow_private
    )
    block_id = block.save(BLOCK, overwrite=True)
    ids = {}
    for name, (events, resource, words) in WHEN.items():
        related = {"prefect.resource.role": "flow", "prefect.resource.name": FLOW} if "flow-run" in resource else {}
        automation = Automation(
            name=name,
            description=f"calls the {BLOCK} webhook",
            trigger=EventTrigger(
                expect=events,
                match=ResourceSpecification({"prefect.resource.id": resource}),
                match_related=ResourceSpecification(related),
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[CallWebhook(block_document_id=block_id, payload=TEXT % words)],
        )
        try:
            automation.id = Automation.read(name=name).id
            automation.update()
        except ValueError:  # not there yet
            automation.id = automation.create().id
        ids[name] = str(automation.id)
    return ids


def main(argv: list[str] | None = None) -> int:
    telemetry_off()
    a = argparse.ArgumentParser(prog="flows.notify", description=__doc__.split("\n\n")[0])
    a.add_argument(
        "--url",
        default=os.environ.get("VAE_NOTIFY_URL"),
        help="the receiver: a chat's incoming-webhook https URL, or a relay (default $VAE_NOTIFY_URL)",
    )
    a.add_argument("--allow-private", action="store_true", help="the URL is on a private address (a local relay)")
    args = a.parse_args(argv)
    if not args.url:
        print("flows.notify: error: give --url URL (or $VAE_NOTIFY_URL): the receiver of the calls", file=sys.stderr)
        return 2
    if not args.url.startswith(("http://", "https://")):
        print(f"flows.notify: error: --url {args.url!r} is invalid: expected an http(s) URL", file=sys.stderr)
        return 2
    for name, automation_id in ensure_automations(args.url, args.allow_private).items():
        print(f"{name}: {automation_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
