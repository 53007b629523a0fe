"""Which study a night works on, and how much: a night is a case, not a replay.

A study belongs to a registered model, a data version (the dataset fingerprint) and the settings that
change what a trial computes (the base config: epochs, patience, subset, split seed...; and the search space).
Its name says so: `<model>-<fingerprint[:8]>-<settings hash[:8]>`; the settings and the fingerprint are kept
as study user attributes (`nightly.settings`, `fingerprint`). The cases:

- first-night: no study of this model yet.
- new-data: the newest study of this model has another fingerprint. The new study is warm-started with the
  best configurations of the newest study with the same settings (`enqueue_trial`).
Every new study starts with the seed recipe as trial 0, then the champion's configuration (vae/tune/seeds.py).
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
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from vae.config import Config
from vae.errors import ConfigError
from vae.tune import seeds
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


def _check_source(storage, model: str, name: str, source: str | None) -> None:
    """ConfigError if the newest earlier study of this model is of another data set (`nightly.source`, see
    vae/tracking/identity.py): its configs would warm-start, and its champion judge, unrelated data. A study of
    before the attribute existed is taken as of this data set."""
    previous = _previous(storage, model, name)
    held = previous[0].user_attrs.get("nightly.source", source) if previous else source
    if held != source:
        raise ConfigError(
            f"model {model!r} has studies of {held} ({previous[0].study_name}), not of {source}: unrelated data "
            "sets must not warm-start each other; give this data set another --model-name (or leave it out: the "
            "default name differs per folder), or pass --switch-data to move the model to it"
        )


def _best_configs(storage, source: str, n: int) -> list[Config]:
    """The configs of the n best distinct complete trials of study `source`, best first."""
    old = optuna.load_study(study_name=source, storage=storage)
    done = sorted((t for t in old.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    configs: list[Config] = []
    for t in done:
        cfg = Config.from_dict(t.user_attrs["config"]) if t.user_attrs.get("config") else None
        if cfg is not None and cfg not in configs:
            configs.append(cfg)
        if len(configs) == n:
            break
    return configs


def _seed(storage, study: optuna.Study, base: Config, space: Any, champion: Config | None, warm: str | None, n: int):
    """The new study's first trials, at most n (its trials): the recipe, the champion's config, WARM_START
    warm-start configs and the space's anchor (seeds.enqueue_first)."""
    resolved = load_space(space, base)
    wanted = [(base, seeds.RECIPE, {})] + ([(champion, "champion", {})] if champion is not None else [])
    carried = _best_configs(storage, warm, min(WARM_START, n)) if warm else []
    wanted += [(cfg, "warm-start", {"warm_start_from": warm}) for cfg in carried]
    wanted += [(cfg, seeds.ANCHOR, {}) for cfg in seeds.anchor_configs(resolved, base)]
    return seeds.enqueue_first(study, wanted, resolved, base, n)


def _new_study(
    storage, model: str, name: str, fingerprint: str, base: Config, space: Any, trials: int, champion: Config | None
) -> dict:
    """Case and reason for a study with no trials yet, and its first trials (vae/tune/seeds.py): the seed recipe
    always, the champion's configuration where there is a champion, on new data the best configurations of the
    newest study with the same settings, and the default space's anchor."""
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    settings = settings_of(base, space)
    h = settings_hash(settings)
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
    plan: dict[str, Any] = {"case": "first-night", "reason": f"no earlier study of {model}"}
    warm = None
    if previous and previous[0].user_attrs.get("fingerprint") != fingerprint:
        fp = (previous[0].user_attrs.get("fingerprint") or "?")[:12]
        plan.update(case="new-data", reason=f"the data changed: fingerprint {fp} -> {fingerprint[:12]}")
        same = [s for s in previous if s.user_attrs.get("nightly.settings_hash") == h and s.n_trials]
        warm = same[0].study_name if same else None
        plan["reason"] += f"; warm-started from {warm}" if warm else "; no earlier study with these settings"
        plan["warm_start_from"] = warm
    elif previous:
        change = _changed(previous[0].user_attrs.get("nightly.settings", {}), settings)
        plan.update(case="new-settings", reason=f"the settings changed since {previous[0].study_name}: {change}")
    waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    plan["seeded"] = [] if waiting else _seed(storage, study, base, space, champion, warm, trials)
    plan["warm_started"] = [q for q in plan["seeded"] if q["origin"] == "warm-start"]
    return plan


def plan_night(
    storage_url: str,
    model: str,
    fingerprint: str,
    base: Config,
    trials: int,
    study: str | None = None,
    space: Any = None,
    champion: Callable[[], Config | None] = lambda: None,
    source: str | None = None,
    switch: bool = False,
) -> dict[str, Any]:
    """The study of this night, its case and reason, and the trial count to reach (`target`). Writes the
    target on the study, so that a night that stops half-way is finished by the next one. A new study starts
    with the recipe, the champion's config (`champion()`, read only then) and the warm-start configs."""
    storage = open_storage(storage_url, heartbeat=None)
    settings = settings_of(base, space)
    h = settings_hash(settings)
    name = study or f"{model}-{fingerprint[:8]}-{h}"
    if source is not None and not switch and name not in optuna.get_all_study_names(storage):
        _check_source(storage, model, name, source)  # before anything is written
    st = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    attrs = st.user_attrs
    # Trials that ended. The night holds its lock, so a trial still RUNNING was left by a night that died: it is
    # work to finish (its retry resumes its checkpoint), not work done.
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    all_trials = counted(st.get_trials(deepcopy=False))
    n = sum(t.state in ended for t in all_trials)
    if not any(t.state != TrialState.WAITING for t in all_trials):  # nothing started yet: a new study
        plan = _new_study(storage, model, name, fingerprint, base, space, trials, champion())
        if source is not None:
            st.set_user_attr("nightly.source", source)
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
        "seeded": [],
        **plan,
        "study": name,
        "settings_hash": h,
        "trials_before": n,
        "target": target,
        "registered": attrs.get("nightly.registered"),
    }


def after_search(plan: dict[str, Any], summary: dict[str, Any], code: str | None = None) -> dict[str, Any]:
    """Whether the night trains a candidate: always on a new study; on a study that already has a registered
    version (same data, or resuming), only when its best trial beats the registered one, or when the code
    (`code`, vae/code.py) is not the code that version was made by (case new-code). {case, reason, train}."""
    reg, best, value = plan.get("registered"), summary.get("best_trial"), summary.get("best_value")
    case, reason = plan["case"], plan["reason"]
    if best is None:
        return {"case": case, "reason": reason + "; no trial completed", "train": False}
    if case not in ("same-data", "resume"):
        return {"case": case, "reason": reason, "train": True}
    better = "same-data-better" if case == "same-data" else "resume"
    if reg is None:
        return {"case": better, "reason": reason + "; nothing registered from this study yet", "train": True}
    if code is not None and reg.get("code") not in (None, code):
        why = f"; the code changed since v{reg['version']} ({reg['code']} -> {code}): training trial {best} anew"
        return {"case": "new-code", "reason": reason + why, "train": True}
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


def mark_registered(
    storage_url: str, name: str, trial: int, value: float, version: str, code: str | None = None
) -> None:
    """The candidate is a registered version: later nights on this study need a better trial (or other code)
    to train."""
    st = _study(storage_url, name)
    st.set_user_attr("nightly.registered", {"trial": trial, "value": value, "version": str(version), "code": code})
    st.set_user_attr("nightly.pending", None)
