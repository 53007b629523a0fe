"""The search space: declared once, overridden by a TOML/YAML file or a mapping, validated whole before any
trial starts; `suggest` draws a point, `to_config` turns it into the trial's Config."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vae.config import MODELS, Config
from vae.errors import ConfigError

# The search space, declared once. A space file overrides entries by name:
#   [lr]             low/high (+ log, step) for numbers,
#   low = 1e-4       choices = [...] for a categorical,
#   high = 3e-3      value = x (or `name = x`) to fix one, `name = [a, b]` for choices.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "latent": {"low": 2, "high": 64, "log": True},
    "hidden_width": {"low": 64, "high": 512, "step": 64},
    "hidden_depth": {"low": 1, "high": 3},
    "model": {"choices": ["vae", "conv-vae"]},
}
# Every parameter a space may name: its type, and where it lands in the Config.
PARAMS: dict[str, tuple[type, str, str]] = {
    "lr": (float, "train", "lr"),
    "beta": (float, "train", "beta"),
    "batch_size": (int, "train", "batch_size"),
    "latent": (int, "model", "latent"),
    "model": (str, "model", "kind"),
    "activation": (str, "model", "activation"),
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
        overrides = source
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    for name, entry in overrides.items():
        if name not in PARAMS:
            raise ConfigError(f"{where}: unknown parameter [{name}]: expected some of {', '.join(PARAMS)}")
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
    return overrides


KEYS = {"low", "high", "log", "step", "choices", "value"}


def _check_entry(name: str, spec: dict[str, Any], base: Config, where: str) -> None:
    kind = PARAMS[name][0]

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: [{name}] {msg}")

    keys = set(spec)
    if keys - KEYS:
        raise bad(f"has unknown key(s) {sorted(keys - KEYS)}: expected low/high (log, step), choices, or value")
    if "value" in keys:
        if keys != {"value"}:
            raise bad("mixes value with other keys: a fixed parameter has only value")
        values = [spec["value"]]
    elif "choices" in keys:
        if keys != {"choices"}:
            raise bad("mixes choices with other keys: a categorical parameter has only choices")
        values = spec["choices"]
        if not isinstance(values, list) or not values:
            raise bad(f"choices={values!r} is invalid: expected a non-empty list")
        if len(set(map(str, values))) != len(values):
            raise bad(f"choices={values!r} repeat a value")
    else:
        values = _check_range(kind, spec, bad)
    for v in values:
        _check_value(name, kind, v, base, bad)


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
            raise bad(f"{k}={spec[k]!r} is invalid: expected {'an integer' if kind is int else 'a number'}")
    if lo > hi:
        raise bad(f"low={lo} > high={hi}: expected low <= high")
    if not isinstance(spec.get("log", False), bool):
        raise bad(f"log={spec['log']!r} is invalid: expected true or false")
    if spec.get("log") and lo <= 0:
        raise bad(f"low={lo} is invalid with log = true: expected low > 0")
    if spec.get("log") and "step" in keys:
        raise bad("cannot have both log and step")
    if "step" in keys and not spec["step"] > 0:
        raise bad(f"step={spec['step']} is invalid: expected step > 0")
    return [lo, hi]


def _check_value(name: str, kind: type, v: Any, base: Config, bad) -> None:
    if name == "model" and v not in MODELS[:1] + MODELS[2:]:
        raise bad(
            f"model={v!r} is invalid in a search: the objective is the validation -ELBO, expected vae or conv-vae"
        )
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind is not str and (not numeric or (kind is int and v != int(v))):
        raise bad(f"value {v!r} is invalid: expected {'an integer' if kind is int else 'a number'}")
    try:
        to_config(base, {name: v})
    except ConfigError as e:
        raise bad(str(e)) from None


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
        sections["model"]["hidden"] = (width,) * depth
    return base.replace(**sections)
