"""The MLflow model registry: register a version, gate promotion, roll back. Aliases, not stages.

`challenger` is the newest candidate; `champion` is the version in use. A candidate becomes champion only
if its test -ELBO (nats/image, lower is better), measured on the same split and dataset fingerprint as the
champion's, beats the champion's by strictly more than `min_improvement` nats (a gain equal to it is not
enough). When the caller scored both models on the same images (the pipeline does: vae/comparison.py), the
gain must be real too: the whole 95% interval of the mean per-image gain must lie above `min_improvement`,
or the challenger is refused as inside the noise. Each decision is written as tags on the candidate version
(and, by the pipeline, on its run). The champion history is derived from one tag per promoted version,
`champion.promoted_at` (nanoseconds, written once by the promotion itself), less the versions `rollback`
marked `rolled_back`: two promotions at once each write their own tag, so neither can lose the other's entry
(a read-modify-write of one JSON list could). The registered model's tag `champion_history` is a copy of
that list for people reading the UI; `rollback` walks the derived list back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vae.comparison import interval_text
from vae.errors import ConfigError, StaleDecision
from vae.io import utc_stamp
from vae.stores import champion_lock
from vae.tracking import identity
from vae.tracking.store import tag_value
from vae.tracking.store import tracking_uri as tracking_uri_of

METRIC = "test_neg_elbo"
DECISION = "promotion.decision"  # written last by apply(): a version without it has no finished decision
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: str
    candidate_value: float
    champion: str | None = None
    champion_value: float | None = None
    min_improvement: float = 0.0
    forced: bool = False
    interval: dict[str, Any] | None = None  # GainInterval.as_dict() of the paired comparison, when there was one
    approval: dict[str, Any] | None = None  # a reviewer's sign-off: decision, reviewer, comment, time

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @property
    def already_champion(self) -> bool:
        """The candidate is the champion itself: nothing to judge, nothing to record."""
        return self.champion == self.candidate

    @property
    def improvement(self) -> float | None:
        """Nats by which the candidate beats the champion (positive: better)."""
        return None if self.champion_value is None else self.champion_value - self.candidate_value

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "improvement": self.improvement, "metric": METRIC}


def decide(
    candidate: str,
    candidate_value: float,
    champion: str | None,
    champion_value: float | None,
    min_improvement: float,
    force: bool = False,
    interval: Mapping[str, Any] | None = None,
) -> Decision:
    """Promote iff the gain beats min_improvement strictly; with an interval, iff all of it does."""
    kw = dict(
        candidate=candidate,
        candidate_value=candidate_value,
        champion=champion,
        champion_value=champion_value,
        min_improvement=min_improvement,
        forced=force,
        interval=dict(interval) if interval is not None else None,
    )
    if not math.isfinite(candidate_value):  # not even by hand: such a model's scores and samples are meaningless
        return Decision(
            False, f"v{candidate}'s test -ELBO is {candidate_value}: a non-finite score is never promoted", **kw
        )
    if force:
        return Decision(True, "forced by hand", **kw)
    if champion is None:
        return Decision(True, "no champion yet: the first version is promoted", **kw)
    gain = champion_value - candidate_value
    if interval is not None:
        noise = interval_text(interval)
        if gain > min_improvement and interval["low"] > min_improvement:
            return Decision(
                True, f"beats champion v{champion} by {gain:.3f} nats, {noise} clear of {min_improvement}", **kw
            )
        if gain > min_improvement:
            return Decision(
                False,
                f"gain over champion v{champion} of {gain:.3f} nats is inside the noise: {noise} "
                f"does not clear min_improvement {min_improvement}",
                **kw,
            )
    why = f"does not beat champion v{champion} by more than {min_improvement} nats (improvement {gain:.3f}"
    if gain > min_improvement:
        return Decision(True, f"beats champion v{champion} by {gain:.3f} nats (> {min_improvement})", **kw)
    return Decision(False, why + (f"; {interval_text(interval)})" if interval is not None else ")"), **kw)


def _v(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


def _client(tracking_uri: str | None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _version(client: MlflowClient, name: str, version: str | int):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise ConfigError(f"model {name!r} has no version {version!r}: see `vae registry list --name {name}`") from None


PROMOTED_AT = "champion.promoted_at"


def _history(client: MlflowClient, name: str) -> list[str]:
    """The champions, oldest first: versions with a promotion stamp that were not rolled back."""
    stamped = [
        (int(mv.tags[PROMOTED_AT]), int(mv.version), str(mv.version))
        for mv in client.search_model_versions(f"name='{name}'")
        if PROMOTED_AT in mv.tags and mv.tags.get("rolled_back") != "true"
    ]
    return [v for *_, v in sorted(stamped)]


def register(
    tracking_uri: str | None,
    name: str,
    model_uri: str,
    run_id: str,
    metrics: dict[str, Any],
    model_id: str | None = None,
    version_tags: dict[str, str] | None = None,
) -> str:
    """A new version of `name` from a logged model, tagged with its test metrics (and version_tags, in the
    same call), and made `challenger`."""
    client = _client(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="VAE models trained by the vae pipeline; aliases: champion (in use), challenger (newest)",
            tags={identity.SOURCE_TAG: identity.data_source(str(metrics["dataset"]))},
        )
    tags = {
        METRIC: f"{metrics['neg_elbo']:.6f}",
        "fingerprint": metrics["fingerprint"],
        "dataset": metrics["dataset"],
        "split": metrics.get("split", "test"),
        **(version_tags or {}),
    }
    # the data set the model holds from now on (a night with switch_data moves it; identity.check_source)
    client.set_registered_model_tag(name, identity.SOURCE_TAG, identity.data_source(str(metrics["dataset"])))
    # model_id: a remote server accepts a models:/m-... source only together with the id of that model
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
    client.set_registered_model_alias(name, CHALLENGER, str(mv.version))
    return str(mv.version)


def judge(
    tracking_uri: str | None,
    name: str,
    version: str | int,
    min_improvement: float = 0.0,
    force: bool = False,
    champion_value: float | None = None,
    interval: Mapping[str, Any] | None = None,
) -> Decision:
    """The gate's decision on `version`, nothing written yet (apply() acts on it). champion_value: the
    champion's test -ELBO re-measured on the candidate's data, when the caller has it (the pipeline does,
    with the paired `interval`)."""
    if not min_improvement >= 0:
        raise ConfigError(f"min_improvement={min_improvement} is invalid: expected a number of nats >= 0")
    client = _client(tracking_uri)
    cand = _version(client, name, version)
    champ = alias_version(client, name, CHAMPION)
    if champ is not None and str(champ.version) == str(cand.version):
        value = float(cand.tags[METRIC])
        return Decision(False, f"v{cand.version} is already champion", str(cand.version), value, str(champ.version))
    if champ is not None and champion_value is None and not force:
        same = [champ.tags.get(k) == cand.tags.get(k) for k in ("fingerprint", "split")]
        if not all(same):
            fingerprints = champ.tags.get("fingerprint", "?")[:12], cand.tags.get("fingerprint", "?")[:12]
            raise ConfigError(
                f"champion v{champ.version} and v{cand.version} were evaluated on different data "
                f"(fingerprints {fingerprints[0]} and {fingerprints[1]}): "
                f"compare them on the same test split (the pipeline re-evaluates the champion), or pass --force"
            )
        champion_value = float(champ.tags[METRIC])
    champion = str(champ.version) if champ else None
    return decide(
        str(cand.version), float(cand.tags[METRIC]), champion, champion_value, min_improvement, force, interval
    )


def apply(tracking_uri: str | None, name: str, d: Decision, approval: Mapping[str, Any] | None = None) -> Decision:
    """Record the decision as tags on the version and, if it promotes, move `champion`. `approval` (a
    reviewer's answer: decision approve|reject, reviewer, comment, time) is recorded too; a reject keeps the
    champion where it is. Under the model's champion lock, which every writer takes: the check that the
    champion is still the one judged against and the move are one step (compare-and-set)."""
    with champion_lock(name, tracking_uri_of(tracking_uri)):
        return _apply(_client(tracking_uri), name, d, approval)


def _apply(client: MlflowClient, name: str, d: Decision, approval: Mapping[str, Any] | None) -> Decision:
    champ = alias_version(client, name, CHAMPION)
    now = str(champ.version) if champ is not None else None
    if d.promote and now == d.candidate and client.get_model_version(name, d.candidate).tags.get(DECISION):
        return d  # applied already (a promote retried after it succeeded): the alias and history stay as they are
    if now != d.champion and not d.already_champion:
        raise StaleDecision(
            f"v{d.candidate} was judged against champion {_v(d.champion)}, but the champion is {_v(now)} now (moved "
            f"since): nothing was changed; judge v{d.candidate} again (the next night does, or `vae registry promote`)"
        )
    if approval is not None:
        d = replace(d, approval=dict(approval))
        if approval["decision"] != "approve" and d.promote:
            who = f"{approval['reviewer']}: {approval.get('comment') or 'no comment'}"
            d = replace(d, promote=False, reason=f"{d.reason}; rejected at sign-off by {who}")
        for key in ("decision", "reviewer", "comment", "time"):
            client.set_model_version_tag(name, d.candidate, f"approval.{key}", tag_value(approval.get(key, "")))
    tags = {
        "promotion.reason": tag_value(d.reason),
        "promotion.time": utc_stamp(),
        "promotion.compared_to": d.champion or "none",
        "promotion.improvement": "" if d.improvement is None else f"{d.improvement:.6f}",
    }
    if d.interval is not None:
        tags |= {"promotion.gain_low": f"{d.interval['low']:.6f}", "promotion.gain_high": f"{d.interval['high']:.6f}"}
    for key, value in tags.items():
        client.set_model_version_tag(name, d.candidate, key, value)
    if d.promote:
        cand = client.get_model_version(name, d.candidate)
        client.set_model_version_tag(name, d.candidate, PROMOTED_AT, str(time.time_ns()))
        if cand.tags.get("rolled_back") == "true":  # promoted again by hand: back in the history
            client.delete_model_version_tag(name, d.candidate, "rolled_back")
        client.set_registered_model_alias(name, CHAMPION, d.candidate)
        client.set_registered_model_tag(name, "champion_history", json.dumps(_history(client, name)))
    # last: a version with a decision tag had its whole decision applied; one without is judged again
    client.set_model_version_tag(
        name, d.candidate, DECISION, "promoted" if d.promote or d.already_champion else "rejected"
    )
    return d


def promote(
    tracking_uri: str | None,
    name: str,
    version: str | int,
    min_improvement: float = 0.0,
    force: bool = False,
    champion_value: float | None = None,
    interval: Mapping[str, Any] | None = None,
    approve: Callable[[Decision], Mapping[str, Any]] | None = None,
) -> Decision:
    """judge() then apply(): make `version` champion if it passes the gate (or force). `approve`, if given,
    is asked before a promotion and returns the reviewer's answer (see apply)."""
    d = judge(tracking_uri, name, version, min_improvement, force, champion_value, interval)
    if d.already_champion:
        return d
    return apply(tracking_uri, name, d, approve(d) if approve is not None and d.promote else None)


def find_version(tracking_uri: str | None, name: str, tag: str, value: str) -> str | None:
    """The newest version of `name` whose tag `tag` is `value`, or None (also when there is no such model)."""
    client = _client(tracking_uri)
    try:
        found = [int(mv.version) for mv in client.search_model_versions(f"name='{name}'") if mv.tags.get(tag) == value]
    except MlflowException:
        return None
    return str(max(found)) if found else None


def rollback(tracking_uri: str | None, name: str) -> dict[str, Any]:
    """Point `champion` back at the previous champion; the history keeps what happened. Under the model's
    champion lock (see apply), so the history read and the move are one step."""
    with champion_lock(name, tracking_uri_of(tracking_uri)):
        return _rollback(_client(tracking_uri), name)


def _rollback(client: MlflowClient, name: str) -> dict[str, Any]:
    history = _history(client, name)
    if len(history) < 2:
        raise ConfigError(f"model {name!r} has no previous champion to roll back to (history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back", "true")
    client.set_registered_model_tag(name, "champion_history", json.dumps(history[:-1]))
    log = json.loads(client.get_registered_model(name).tags.get("rollback_log", "[]"))
    log.append({"from": current, "to": previous, "time": utc_stamp()})
    client.set_registered_model_tag(name, "rollback_log", json.dumps(log))
    return {"name": name, "champion": previous, "rolled_back": current}


def list_versions(tracking_uri: str | None, name: str) -> list[dict[str, Any]]:
    client = _client(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise ConfigError(f"no registered model named {name!r} in {tracking_uri or 'the default store'}") from None
    by_version: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():  # search results leave aliases empty on some stores
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                METRIC: float(mv.tags[METRIC]) if METRIC in mv.tags else None,
                "fingerprint": mv.tags.get("fingerprint", ""),
                "decision": mv.tags.get(DECISION, ""),
                "created": mv.creation_timestamp,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]))
