"""Which study a night works on, and how much: a night is a case, not a replay.

A study belongs to a registered model, a data version (the dataset fingerprint) and the settings that
change what a trial computes (the base config: tune epochs, subset, split seed...; and the search space).
Its name says so: `<model>-<fingerprint[:8]>-<settings hash[:8]>`; the settings and the fingerprint are kept
as study user attributes (`nightly.settings`, `fingerprint`). The cases:

- first-night: no study of this model yet.
- new-data: the newest study of this model has another fingerprint. The new study is warm-started with the
  best configurations of the newest study with the same settings (`enqueue_trial`).
- new-settings: same data, other settings: a study of its own, never a failure.
- same-data: the night adds `trials` trials to the study; whether anything is trained is decided after the
  search (`after_search`): only when the best trial beats the one registered from this study.
- resume: the last night on this study stopped before its end (trials left, or a candidate chosen but not
  registered): this night finishes that work, adding no trials.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from vae.config import Config
from vae.tune.space import load_space
from vae.tune.storage import counted, open_storage
from vae.tune.study import _comparable

WARM_START = 3  # configurations carried over from the previous data version


def settings_of(base: Config, space: Any = None) -> dict[str, Any]:
    """What a trial computes besides the data: the base config (how a trial runs removed) and the space."""
    return {"base_config": _comparable(base), "space": load_space(space, base)}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = ", ".join(f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys[:4])
    return shown + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def _previous(storage, model: str, name: str) -> list[optuna.study.StudySummary]:
    """The other nightly studies of this model, newest first."""
    mine = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.user_attrs.get("nightly.model") == model and s.study_name != name
    ]
    return sorted(mine, key=lambda s: s.user_attrs.get("nightly.created", 0), reverse=True)


def _warm_start(storage, study: optuna.Study, source: str, n: int) -> list[dict[str, Any]]:
    """Enqueue the n best distinct configurations of study `source` as the first trials of `study`."""
    old = optuna.load_study(study_name=source, storage=storage)
    best = sorted((t for t in old.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    chosen: list[dict[str, Any]] = []
    for t in best:
        if len(chosen) == n:
            break
        if t.params not in chosen:
            chosen.append(t.params)
            study.enqueue_trial(t.params, user_attrs={"warm_start_from": f"{source}#{t.number}"})
    return chosen


def _new_study(storage, model: str, name: str, fingerprint: str, settings: dict, h: str, trials: int) -> dict:
    """Case and reason for a study with no trials yet; warm-starts it on new data."""
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    previous = _previous(storage, model, name)
    for key, value in {
        "nightly.model": model,
        "nightly.created": time.time(),
        "nightly.settings": settings,
        "nightly.settings_hash": h,
        "fingerprint": fingerprint,
    }.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    plan: dict[str, Any] = {"case": "first-night", "reason": f"no earlier study of {model}", "warm_started": []}
    if not previous:
        return plan
    last = previous[0]
    if last.user_attrs.get("fingerprint") != fingerprint:
        fp = (last.user_attrs.get("fingerprint") or "?")[:12]
        plan.update(case="new-data", reason=f"the data changed: fingerprint {fp} -> {fingerprint[:12]}")
        same = [s for s in previous if s.user_attrs.get("nightly.settings_hash") == h and s.n_trials]
        waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if same and not waiting:
            plan["warm_started"] = _warm_start(storage, study, same[0].study_name, min(WARM_START, trials))
            plan["warm_start_from"] = same[0].study_name
            plan["reason"] += f"; warm-started with the {len(plan['warm_started'])} best of {same[0].study_name}"
        elif not same:
            plan["reason"] += "; no earlier study with these settings to warm-start from"
    else:
        change = _changed(last.user_attrs.get("nightly.settings", {}), settings)
        plan.update(case="new-settings", reason=f"the settings changed since {last.study_name}: {change}")
    return plan


def plan_night(
    storage_url: str,
    model: str,
    fingerprint: str,
    base: Config,
    trials: int,
    study: str | None = None,
    space: Any = None,
) -> dict[str, Any]:
    """The study of this night, its case and reason, and the trial count to reach (`target`). Writes the
    target on the study, so that a night that stops half-way is finished by the next one."""
    storage = open_storage(storage_url, heartbeat=None)
    settings = settings_of(base, space)
    h = settings_hash(settings)
    name = study or f"{model}-{fingerprint[:8]}-{h}"
    st = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    attrs = st.user_attrs
    n = sum(t.state != TrialState.WAITING for t in counted(st.get_trials(deepcopy=False)))  # started trials
    if n == 0:
        plan = _new_study(storage, model, name, fingerprint, settings, h, trials)
        target = trials
    elif n < attrs.get("nightly.target", 0):
        target = attrs["nightly.target"]
        plan = {"case": "resume", "reason": f"the last night stopped after {n} of {target} trials: finishing them"}
    elif attrs.get("nightly.pending") is not None:
        target, pending = n, attrs["nightly.pending"]
        plan = {"case": "resume", "reason": f"trial {pending} was chosen by the last night but never registered"}
    else:
        target = n + trials
        plan = {"case": "same-data", "reason": f"same data and settings: {trials} more trials ({n} -> {target})"}
    st.set_user_attr("nightly.target", target)
    return {
        "warm_started": [],
        **plan,
        "study": name,
        "settings_hash": h,
        "trials_before": n,
        "target": target,
        "registered": attrs.get("nightly.registered"),
    }


def after_search(plan: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Whether the night trains a candidate: always on a new study; on a study that already has a registered
    version (same data, or resuming), only when its best trial beats the registered one. {case, reason, train}."""
    reg, best, value = plan.get("registered"), summary.get("best_trial"), summary.get("best_value")
    case, reason = plan["case"], plan["reason"]
    if best is None:
        return {"case": case, "reason": reason + "; no trial completed", "train": False}
    if case not in ("same-data", "resume"):
        return {"case": case, "reason": reason, "train": True}
    better = "same-data-better" if case == "same-data" else "resume"
    if reg is None:
        return {"case": better, "reason": reason + "; nothing registered from this study yet", "train": True}
    if best != reg["trial"] and value < reg["value"]:
        why = f"; trial {best} (val -ELBO {value:.3f}) beats trial {reg['trial']} ({reg['value']:.3f})"
        why += f", registered as v{reg['version']}"
        return {"case": better, "reason": reason + why, "train": True}
    why = f"; the best is still trial {best} ({value:.3f}), registered as v{reg['version']}"
    if best != reg["trial"]:
        why = f"; best trial {best} ({value:.3f}) is no better than trial {reg['trial']} of v{reg['version']}"
    return {"case": "same-data-no-better", "reason": reason + why, "train": False}


def _study(storage_url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage_url, heartbeat=None))


def mark_pending(storage_url: str, name: str, trial: int) -> None:
    """The night's candidate is being trained: a night that dies now is resumed by the next one."""
    _study(storage_url, name).set_user_attr("nightly.pending", trial)


def mark_registered(storage_url: str, name: str, trial: int, value: float, version: str) -> None:
    """The candidate is a registered version: later nights on this study need a better trial to train."""
    st = _study(storage_url, name)
    st.set_user_attr("nightly.registered", {"trial": trial, "value": value, "version": str(version)})
    st.set_user_attr("nightly.pending", None)
