"""The trials a new study starts with, before the sampler draws any.

First the seed recipe: the study's base config itself (the tutorial's 784-400-20 VAE, Adam 1e-3, batch 128, at the
study's budget), which no pruner may stop, so that a study can never end worse than the recipe at its own budget,
and the recipe's score is there to measure every other trial against. Then, for a pipeline night, the champion's
configuration and the warm-start configurations of the previous data version. Last the default space's anchor:
the best single configuration of the scratch runs that chose the space (a 16-channel convolutional VAE, 107.6
test -ELBO against the recipe's 114.3 on mnist-5k), so that every study holds one strong point of the kind that
ends best, however its random start-up falls; a space that cannot express it (say, MLPs only) skips it, and
`vae tune --no-anchors` leaves it out (benchmarks/search_quality.py measures both). Each goes in as the point of the
search space that trains it, so the sampler learns from it; a configuration the space cannot express (a choice it
lacks, a value outside a range) runs as a fixed config (user attribute `fixed_config`), which the sampler does not
model but the study still ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from vae.config import Config
from vae.tune.space import params_of, to_config

RECIPE = "recipe"
ORIGIN = "origin"  # user attribute: recipe, champion, warm-start (absent: drawn by the sampler)
FIXED = "fixed_config"
ANCHOR = "anchor"
ANCHORS: tuple[dict[str, Any], ...] = (
    {
        "model": {"kind": "conv-vae", "channels": 16, "hidden": [400], "latent": 24},
        "train": {"lr": 7e-4, "batch_size": 64},
    },
)
BUDGET = ("epochs", "patience", "seed", "device", "progress", "bf16", "cuda_graph")  # how long and where, not what


def on_budget(cfg: Config, base: Config) -> Config:
    """cfg's model and training with the study's data and budget: what a trial of this study trains for it."""
    return cfg.replace(data=base.to_dict()["data"], train={k: getattr(base.train, k) for k in BUDGET})


def trial_config(t: FrozenTrial, base: Config) -> Config | None:
    """The config a trial trains (or will, for one still waiting), or None when it cannot be told."""
    if t.user_attrs.get(FIXED):
        return Config.from_dict(t.user_attrs[FIXED])
    params = t.params or t.system_attrs.get("fixed_params") or {}
    try:
        return to_config(base, params)
    except Exception:  # a point of an older space that this base no longer accepts
        return None


def enqueue(
    study: optuna.Study, cfg: Config, space: Mapping[str, Any], base: Config, origin: str, attrs: Mapping = ()
) -> dict[str, Any] | None:
    """Queue cfg (on the study's budget) as the study's next trial, unless a trial of the study already trains
    it; returns what was queued ({origin, params} or {origin, fixed_config}), or None for a duplicate."""
    cfg = on_budget(cfg, base)
    for t in study.get_trials(deepcopy=False):
        known = trial_config(t, base)
        if known is not None and (known.model, known.train) == (cfg.model, cfg.train):
            return None
    point = params_of(cfg, space, base)
    user_attrs: dict[str, Any] = {ORIGIN: origin, **dict(attrs)}
    if point is None:
        user_attrs[FIXED] = cfg.to_dict()
    study.enqueue_trial(point or {}, user_attrs=user_attrs)
    return {ORIGIN: origin, **({"params": point} if point is not None else {FIXED: cfg.to_dict()})}


def enqueue_recipe(study: optuna.Study, space: Mapping[str, Any], base: Config) -> dict[str, Any] | None:
    return enqueue(study, base, space, base, RECIPE)


def anchor_configs(space: Mapping[str, Any], base: Config) -> list[Config]:
    """The anchors the space can express (queued as points of it, never as fixed configs)."""
    configs = [base.replace(**anchor) for anchor in ANCHORS]
    return [cfg for cfg in configs if params_of(on_budget(cfg, base), space, base) is not None]


def enqueue_first(
    study: optuna.Study,
    wanted: Iterable[tuple[Config, str, Mapping[str, Any]]],
    space: Mapping[str, Any],
    base: Config,
    n: int,
) -> list[dict[str, Any]]:
    """Queue a new study's first trials in their order (cfg, origin, attrs), duplicates once, at most n (the
    trials the night or the tune runs): one queued past them would only be refused as surplus, a failed trial
    in the log and in the counts."""
    queued: list[dict[str, Any]] = []
    for cfg, origin, attrs in wanted:
        if len(queued) < n and (q := enqueue(study, cfg, space, base, origin, attrs)) is not None:
            queued.append(q)
    return queued


def is_recipe(t: FrozenTrial) -> bool:
    return t.user_attrs.get(ORIGIN) == RECIPE
