"""The search space: declared once, overridden by a TOML/YAML file or a mapping, validated whole before any
trial starts; `suggest` draws a point, `to_config` turns it into the trial's Config."""

from __future__ import annotations

import json
import math
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vae.config import Config, shown
from vae.errors import ConfigError
from vae.kinds import listed, names

# The search space, declared once. A space file overrides entries by name:
#   [lr]             low/high (+ log, step) for numbers,
#   low = 1e-4       choices = [...] for a categorical,
#   high = 3e-3      value = x (or `name = x`) to fix one, `name = [a, b]` for choices.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model": {"choices": list(names(searchable=True))},
    "channels": {"value": 16},
    "hidden_width": {"low": 256, "high": 1024, "log": True},
    "latent": {"low": 12, "high": 40, "log": True},
    "lr": {"low": 5e-4, "high": 2e-3, "log": True},
    "batch_size": {"choices": [64, 128]},
}
# Why these (scratch runs of single configs at 50 epochs, patience 5, on mnist-5k; the search itself is measured by
# benchmarks/search_quality.py, README "Search quality"): the convolutional VAE ends 6-7 nats below the seed's MLP
# (107.6 against 114.3 test -ELBO), wide MLPs 2-3; a 16-channel one (hidden 400, latent 24, batch 64) matched a
# 32-channel one (hidden 256, batch 128) at 107.6 for about half the FLOPs; one hidden layer beats two at this
# budget; latents below ~12 lose 5-20 nats; lr 3e-4 loses 10, batch 256 4, batch 32 costs twice batch 64's time
# for nothing. The seed recipe (vae, 400 wide, latent 20, lr 1e-3, batch 128) is a point of it: every new study
# starts with it as trial 0, and with the anchor (vae/tune/seeds.py).
# Every parameter a space may name: its type, and where it lands in the Config.
PARAMS: dict[str, tuple[type, str, str]] = {
    "lr": (float, "train", "lr"),
    "beta": (float, "train", "beta"),
    "batch_size": (int, "train", "batch_size"),
    "latent": (int, "model", "latent"),
    "model": (str, "model", "kind"),
    "activation": (str, "model", "activation"),
    "channels": (int, "model", "channels"),
    "hidden_width": (int, "model", "hidden"),
    "hidden_depth": (int, "model", "hidden"),
    "lr_schedule": (str, "train", "lr_schedule"),
}


def space_tag(space: Mapping[str, Any]) -> str:
    """The resolved space as one JSON string: the `search_space` tag of a study's MLflow run."""
    return json.dumps(space, sort_keys=True)


def load_space(source: str | Path | Mapping[str, Any] | None, base: Config) -> dict[str, dict[str, Any]]:
    """The default space with a file's (TOML or YAML) or a mapping's entries overriding it, validated whole:
    a bad entry raises ConfigError naming it, before any trial starts."""
    where = "search space"
    overrides: Mapping[str, Any] = {}
    if isinstance(source, (str, Path)):
        where, overrides = f"space file {source}", _read_space_file(Path(source))
    elif source is not None:
        if not isinstance(source, Mapping):
            raise ConfigError(f"search space {shown(source)} is invalid: expected a mapping of parameters or a file")
        overrides = source
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    for name, entry in overrides.items():
        if name not in PARAMS:
            shown_name = name if isinstance(name, str) else shown(name)  # a YAML key may be any value
            raise ConfigError(f"{where}: unknown parameter [{shown_name}]: expected some of {', '.join(PARAMS)}")
        if isinstance(entry, Mapping):
            space[name] = dict(entry)
        elif isinstance(entry, list):
            space[name] = {"choices": entry}
        else:
            space[name] = {"value": entry}
    for name, spec in space.items():
        _check_entry(name, spec, base, where)
    return space


def _read_space_file(path: Path) -> Mapping[str, Any]:
    where = f"space file {path}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist: expected a TOML or YAML file")
    try:
        if path.suffix in (".yaml", ".yml"):
            overrides = yaml.safe_load(path.read_text()) or {}
        else:
            overrides = tomllib.loads(path.read_text())
    except Exception as e:  # a syntax error: say where, in one line
        raise ConfigError(f"{where} cannot be parsed: {str(e).splitlines()[0]}") from None
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where} is invalid: expected a table of parameters, e.g. [lr] low = 1e-4 high = 1e-2")
    if _too_many(overrides, MAX_VALUES):  # YAML aliases: a few hundred bytes can stand for 10**9 strings
        raise ConfigError(f"{where} holds more than {MAX_VALUES} values (YAML aliases expanded): expected a few")
    return overrides


MAX_VALUES = 10_000  # values a space file may hold, every list item and mapping key counted


def _too_many(value: Any, limit: int) -> bool:
    """Whether value holds more than `limit` values, aliases counted each time they appear: stops there."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(v, Mapping):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list):
            stack += v
    return False


KEYS = {"low", "high", "log", "step", "choices", "value"}
MAX_DEPTH = 8  # hidden layers at most, as ModelConfig allows


def _check_entry(name: str, spec: dict[str, Any], base: Config, where: str) -> None:
    kind = PARAMS[name][0]

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: [{name}] {msg}")

    keys = set(spec)
    if keys - KEYS:  # a YAML key may be any value: shown() prints each, an integer of 6000 digits included
        unknown = ", ".join(sorted(map(shown, keys - KEYS)))
        raise bad(f"has unknown key(s) [{unknown}]: expected low/high (log, step), choices, or value")
    if "value" in keys:
        if keys != {"value"}:
            raise bad("mixes value with other keys: a fixed parameter has only value")
        values = [spec["value"]]
    elif "choices" in keys:
        if keys != {"choices"}:
            raise bad("mixes choices with other keys: a categorical parameter has only choices")
        values = spec["choices"]
        if not isinstance(values, list) or not values:
            raise bad(f"choices={shown(values)} is invalid: expected a non-empty list")
    else:
        values = _check_range(kind, spec, bad)
    for v in values:
        _check_value(name, kind, v, base, bad)
    if "choices" in keys and len(set(map(str, values))) != len(values):  # each valid, so small: str() is cheap
        raise bad(f"choices={shown(values)} repeat a value")


def _check_range(kind: type, spec: dict[str, Any], bad) -> list[Any]:
    """low/high (log, step) of a numeric parameter; returns [low, high]."""
    keys = set(spec)
    if kind is str:
        raise bad("is categorical: expected choices = [...] or value = ...")
    if not {"low", "high"} <= keys:
        raise bad("needs both low and high (or choices, or value)")
    lo, hi = spec["low"], spec["high"]
    num = (int,) if kind is int else (int, float)
    for k in ("low", "high") + (("step",) if "step" in keys else ()):
        if not isinstance(spec[k], num) or isinstance(spec[k], bool):
            raise bad(f"{k}={shown(spec[k])} is invalid: expected {'an integer' if kind is int else 'a number'}")
    if lo > hi:
        raise bad(f"low={shown(lo)} > high={shown(hi)}: expected low <= high")
    if not isinstance(spec.get("log", False), bool):
        raise bad(f"log={shown(spec['log'])} is invalid: expected true or false")
    if spec.get("log") and lo <= 0:
        raise bad(f"low={shown(lo)} is invalid with log = true: expected low > 0")
    if spec.get("log") and "step" in keys:
        raise bad("cannot have both log and step")
    if "step" in keys and not spec["step"] > 0:
        raise bad(f"step={shown(spec['step'])} is invalid: expected step > 0")
    return [lo, hi]


def _check_value(name: str, kind: type, v: Any, base: Config, bad) -> None:
    if name == "model" and v not in names(searchable=True):
        raise bad(
            f"model={shown(v)} is invalid in a search: the objective is the validation -ELBO, "
            f"expected {listed(names(searchable=True))}"
        )
    if kind is not str and not _number(v, kind):
        raise bad(f"value {shown(v)} is invalid: expected {'an integer' if kind is int else 'a finite number'}")
    try:
        to_config(base, {name: v})
    except ConfigError as e:
        raise bad(str(e)) from None


def _number(v: Any, kind: type) -> bool:
    """v is a number of the parameter's kind: any integer (or integral float) for int, a finite float for float
    (an integer past the floats' range, or NaN or infinity, is none; TOML and YAML write all three)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, int):
        return kind is int or abs(v) <= sys.float_info.max
    return math.isfinite(v) and (kind is float or v.is_integer())


def suggest(trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw one point; works with optuna's Trial and with TorchDistributedTrial (fixed values are not
    suggested: they stay out of the study's parameters and its importance plots)."""
    params = {}
    for name, spec in space.items():
        kind = PARAMS[name][0]
        if "value" in spec:
            params[name] = spec["value"]
        elif "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind is int:
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            params[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=spec.get("log", False)
            )
    return params


def to_config(base: Config, params: Mapping[str, Any]) -> Config:
    """The trial's full Config: base with the drawn parameters in place."""
    sections: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, v in params.items():
        _, section, field = PARAMS[name]
        if field != "hidden":
            sections[section][field] = float(v) if PARAMS[name][0] is float else v
    if "hidden_width" in params or "hidden_depth" in params:
        width = int(params.get("hidden_width", base.model.hidden[0]))
        depth = int(params.get("hidden_depth", len(base.model.hidden)))
        if not 1 <= depth <= MAX_DEPTH:  # checked before (width,) * depth: 2**32 layers would be 34 GB of tuple
            raise ConfigError(f"hidden_depth={shown(depth)} is invalid: expected 1 to {MAX_DEPTH} hidden layers")
        sections["model"]["hidden"] = (width,) * depth
    return base.replace(**sections)


def _value_in(cfg: Config, name: str) -> Any:
    """The value a parameter of the space has in cfg (None for mixed hidden widths, which no point expresses)."""
    _, section, field = PARAMS[name]
    if name == "hidden_width":
        return cfg.model.hidden[0] if len(set(cfg.model.hidden)) == 1 else None
    if name == "hidden_depth":
        return len(cfg.model.hidden)
    return getattr(getattr(cfg, section), field)


def _allows(spec: Mapping[str, Any], v: Any) -> bool:
    if v is None:
        return False
    if "choices" in spec:
        return v in spec["choices"]
    if not spec["low"] <= v <= spec["high"]:
        return False
    steps = (v - spec["low"]) / spec["step"] if "step" in spec else 0.0
    return abs(steps - round(steps)) < 1e-9


def params_of(cfg: Config, space: Mapping[str, Mapping[str, Any]], base: Config) -> dict[str, Any] | None:
    """The point of `space` whose trial config (to_config(base, point)) trains what cfg trains, or None where the
    space cannot say it: a value outside a range or off its step, a choice it lacks, a value it fixes otherwise,
    or cfg differing from base in a field the space has no parameter for. Fixed entries stay out of the point
    (the trial applies them, as suggest() does)."""
    point, fixed = {}, {}
    for name, spec in space.items():
        if "value" in spec:  # whether cfg agrees with it is for the round trip below to say (a fixed width may
            fixed[name] = spec["value"]  # not apply to cfg's model kind)
            continue
        v = _value_in(cfg, name)
        if not _allows(spec, v):
            return None
        point[name] = v
    try:
        same = to_config(base, {**point, **fixed})
    except ConfigError:
        return None
    return point if (same.model, same.train) == (cfg.model, cfg.train) else None
