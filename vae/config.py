"""Typed, frozen configs for data, model and training, validated once at construction.

A bad value raises ConfigError naming the field and what would be right, before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from vae.errors import ConfigError
from vae.kinds import KINDS, listed, names

DATASETS = ("mnist-5k", "mnist", "fashion-mnist")  # plus "idx:PATH" and "folder:PATH"
ACTIVATIONS = ("relu", "tanh")
NOISES = ("none", "gaussian", "masking", "salt-pepper")
BINARIZE = ("none", "dynamic")
DEVICES = ("auto", "cpu", "cuda")
OBJECTIVES = ("elbo", "iwae")
LR_SCHEDULES = ("constant", "exp")
# The most weights a model may have: 4 GB as float32, about 16 GB to train (gradients and Adam's two moments
# beside the weights). MNIST models have a few million; 2 layers of 16384 have 0.56e9, 8 layers 3.8e9.
MAX_WEIGHTS = 1_000_000_000
SEED_LIMIT = 2**32  # torch's generators take 64-bit seeds; an epoch's is seed * 1_000_003 + epoch (vae/batches.py)


def shown(value: Any, limit: int = 80) -> str:
    """repr(value) for an error message, cut past `limit` characters. A value repr() cannot print is described
    instead: an integer past Python's 4300 digits (ValueError), a list nested too deep (RecursionError)."""
    try:
        text = repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"<an integer of about {round(value.bit_length() * math.log10(2))} digits>"
        return f"<a {type(value).__name__} holding an integer too long to print>"
    except RecursionError:
        return f"<a {type(value).__name__} nested too deep to print>"
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} characters)"


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={shown(value)} is invalid: expected {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinite, not an int beyond the floats)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _is_str(v: Any, choices: tuple[str, ...] | dict | None = None) -> bool:
    """A string (one of choices, if given): unhashable or non-string values of a JSON file are refused too."""
    return isinstance(v, str) and (choices is None or v in choices)


def _optional_path(cfg: Any, name: str, what: str) -> None:
    """cfg.name must be a str or None; a path (os.PathLike) is kept as its str."""
    value = getattr(cfg, name)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        object.__setattr__(cfg, name, value)
    _check(value is None or (_is_str(value) and "\0" not in value), name, value, what)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist-5k"
    data_dir: str | None = None  # None: $VAE_DATA_DIR or ~/.cache/vae
    mirror: str | None = None  # None: $VAE_MNIST_MIRROR or the official mirrors
    split_seed: int = 0
    subset: int | None = None  # use only the first N (shuffled) training images; for quick runs
    binarize: str = "none"  # "dynamic": fresh Bernoulli draws of the grey levels every epoch

    def __post_init__(self) -> None:
        ok = _is_str(self.dataset) and (
            self.dataset in DATASETS
            or any(
                self.dataset.startswith(prefix) and len(self.dataset) > len(prefix) and "\0" not in self.dataset
                for prefix in ("idx:", "folder:")
            )
        )
        _check(ok, "dataset", self.dataset, f"one of {', '.join(DATASETS)}, idx:PATH or folder:PATH")
        _optional_path(self, "data_dir", "a folder path (a string) or None")
        _optional_path(self, "mirror", "a base URL (a string) such as http://127.0.0.1:8000/, or None")
        _check(
            _is_int(self.split_seed) and abs(self.split_seed) < 2**63,
            "split_seed",
            self.split_seed,
            "an integer from -(2**63 - 1) to 2**63 - 1",
        )
        _check(
            self.subset is None or (_is_int(self.subset) and self.subset > 0),
            "subset",
            self.subset,
            "a positive number of images or None",
        )
        _check(_is_str(self.binarize, BINARIZE), "binarize", self.binarize, f"one of {', '.join(BINARIZE)}")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "vae"
    latent: int = 20
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    channels: int = 32  # conv-vae: channels of its first convolution (the second has twice as many)

    def __post_init__(self) -> None:
        _check(_is_str(self.kind, KINDS), "model", self.kind, f"one of {', '.join(KINDS)}")
        _check(isinstance(self.hidden, (list, tuple)), "hidden", self.hidden, "a list of 1 to 8 layer widths")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not KINDS[self.kind].convolutional:  # a width the kind lacks: one value, so equal models compare equal
            object.__setattr__(self, "channels", 32)
        _check(_is_int(self.latent) and 1 <= self.latent <= 4096, "latent", self.latent, "an integer from 1 to 4096")
        _check(
            1 <= len(self.hidden) <= 8 and all(_is_int(h) and 1 <= h <= 16384 for h in self.hidden),
            "hidden",
            self.hidden,
            "1 to 8 layer widths, each from 1 to 16384",
        )
        _check(_is_str(self.activation, ACTIVATIONS), "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        _check(
            _is_int(self.channels) and 1 <= self.channels <= 512, "channels", self.channels, "an integer from 1 to 512"
        )
        n = self.weights()
        if n > MAX_WEIGHTS:
            raise ConfigError(
                f"hidden={list(self.hidden)!r} with latent={self.latent}"
                + (f", channels={self.channels}" if KINDS[self.kind].convolutional else "")
                + f" is too large: a {self.kind} of these sizes has {n:,} weights ({4 * n / 1e9:.1f} GB as float32, "
                f"about {16 * n / 1e9:.0f} GB to train with gradients and Adam's moments): expected at most "
                f"{MAX_WEIGHTS:,} weights ({4 * MAX_WEIGHTS / 1e9:.0f} GB); use fewer or narrower hidden layers"
            )

    def weights(self) -> int:
        """The number of weights (biases included) of the model vae/models.py builds from this config, counted
        without building it: the encoder's dense layers, its code head(s) (mu and logvar, or the AE's one), the
        mirrored decoder; for a convolutional kind also its two convolutions and their two transposes."""
        kind = KINDS[self.kind]
        c, h = self.channels, list(self.hidden)
        outer = 2 * c * 7 * 7 if kind.convolutional else 28 * 28  # what the dense layers take and give back

        def dense(sizes: list[int]) -> int:
            return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

        heads = (2 if kind.variational else 1) * (h[-1] * self.latent + self.latent)
        convs = (17 * c) + (32 * c * c + 2 * c) + (32 * c * c + c) + (16 * c + 1) if kind.convolutional else 0
        return dense([outer, *h]) + heads + dense([self.latent, *h[::-1], outer]) + convs


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # global: split across processes under DDP
    lr: float = 1e-3
    beta: float = 1.0  # weight of the KL term
    noise: str = "none"  # denoising: corrupt the input, reconstruct the clean image
    noise_level: float = 0.3
    seed: int = 0
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    objective: str = "elbo"  # "iwae": the K-sample importance-weighted bound (Burda et al. 2015)
    k: int = 1  # importance samples per image for objective="iwae"
    lr_schedule: str = "constant"  # "exp": lr decays geometrically to lr/10 at the last epoch
    device: str = "auto"
    bf16: bool = False  # autocast on CUDA
    cuda_graph: bool = False  # replay one recorded step per full batch (vae/captured.py); one CUDA process
    progress: bool = True
    patience: int | None = None  # early stopping: stop after this many epochs without a better val loss; None: off

    def __post_init__(self) -> None:
        _check(_is_int(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        for name in ("bf16", "cuda_graph", "progress"):
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        _check(
            self.patience is None or (_is_int(self.patience) and self.patience >= 1),
            "patience",
            self.patience,
            "an integer >= 1 (epochs without improvement), or None for no early stopping",
        )
        _check(
            _is_int(self.batch_size) and 1 <= self.batch_size <= 65536,
            "batch_size",
            self.batch_size,
            "an integer from 1 to 65536",
        )
        _check(_is_num(self.lr) and 0 < self.lr <= 10, "lr", self.lr, "a number in (0, 10]")
        _check(_is_num(self.beta) and self.beta >= 0, "beta", self.beta, "a number >= 0")
        _check(_is_str(self.noise, NOISES), "noise", self.noise, f"one of {', '.join(NOISES)}")
        _check(
            _is_num(self.noise_level) and 0 <= self.noise_level <= 1,
            "noise_level",
            self.noise_level,
            "a number in [0, 1]",
        )
        _check(
            _is_int(self.seed) and 0 <= self.seed < SEED_LIMIT,
            "seed",
            self.seed,
            f"an integer from 0 to {SEED_LIMIT - 1}",
        )
        _check(
            self.clip_grad is None or (_is_num(self.clip_grad) and self.clip_grad > 0),
            "clip_grad",
            self.clip_grad,
            "a number > 0 or None",
        )
        _check(_is_str(self.device, DEVICES), "device", self.device, f"one of {', '.join(DEVICES)}")
        _check(
            not (self.cuda_graph and self.device == "cpu"),
            "cuda_graph",
            self.cuda_graph,
            "False with device='cpu': a CUDA graph needs --device cuda (or auto)",
        )
        _check(_is_str(self.objective, OBJECTIVES), "objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        _check(_is_int(self.k) and 1 <= self.k <= 5000, "k", self.k, "an integer from 1 to 5000")
        _check(self.objective == "iwae" or self.k == 1, "k", self.k, "1 unless objective='iwae'")
        _check(
            _is_str(self.lr_schedule, LR_SCHEDULES),
            "lr_schedule",
            self.lr_schedule,
            f"one of {', '.join(LR_SCHEDULES)}",
        )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The config a dict (a JSON file's object) describes; ConfigError naming what is wrong: not an object,
        an unknown section or field, a field of the wrong type or out of range."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"the config is {_json_type(d)}: expected an object with the sections data, model, train, "
                'such as {"model": {"latent": 20}}'
            )

        def build(kind, section):
            values = {} if d.get(section) is None else d[section]
            if not isinstance(values, dict):
                raise ConfigError(
                    f"config section {section!r} is {_json_type(values)}: expected an object of "
                    f"{kind.__name__} fields such as {_example(kind)}"
                )
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(map(str, set(values) - known))
            if unknown:
                raise ConfigError(f"unknown {kind.__name__} field(s) {unknown}: expected some of {sorted(known)}")
            return kind(**values)

        unknown = sorted(map(str, set(d) - {"data", "model", "train"}))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}: expected data, model, train")
        return cls(build(DataConfig, "data"), build(ModelConfig, "model"), build(TrainConfig, "train"))

    def __post_init__(self) -> None:
        _check(
            self.train.objective != "iwae" or KINDS[self.model.kind].variational,
            "objective",
            self.train.objective,
            f"'elbo' for --model {self.model.kind} (it has no posterior to importance-sample; "
            f"iwae needs {listed(names(variational=True))})",
        )

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Copy with some fields changed, e.g. cfg.replace(train={"epochs": 3})."""
        d = self.to_dict()
        for name, values in sections.items():
            d[name].update(values)
        return Config.from_dict(d)


def _json_type(value: Any) -> str:
    """What a JSON value is, in words, with the value itself when it is short: 'a list ([1, 2])'."""
    words = {list: "a list", str: "a string", bool: "a boolean", dict: "an object", int: "a number", float: "a number"}
    words[type(None)] = "null"
    text = shown(value)
    kind = words.get(type(value), type(value).__name__)
    return f"{kind} ({text})" if len(text) <= 40 else kind


def _example(kind: type) -> str:
    """One field of the section with its default, as JSON: {"latent": 20}."""
    first = dataclasses.fields(kind)[1 if kind is ModelConfig else 0]
    return json.dumps({first.name: first.default})
