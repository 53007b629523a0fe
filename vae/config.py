"""Typed, frozen configs for data, model and training, validated once at construction.

A bad value raises ConfigError naming the field and what would be right, before anything is written.
"""

from __future__ import annotations

import dataclasses
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


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist-5k"
    data_dir: str | None = None  # None: $VAE_DATA_DIR or ~/.cache/vae
    mirror: str | None = None  # None: $VAE_MNIST_MIRROR or the official mirrors
    split_seed: int = 0
    subset: int | None = None  # use only the first N (shuffled) training images; for quick runs
    binarize: str = "none"  # "dynamic": fresh Bernoulli draws of the grey levels every epoch

    def __post_init__(self) -> None:
        ok = self.dataset in DATASETS or any(
            self.dataset.startswith(prefix) and len(self.dataset) > len(prefix) for prefix in ("idx:", "folder:")
        )
        _check(ok, "dataset", self.dataset, f"one of {', '.join(DATASETS)}, idx:PATH or folder:PATH")
        _check(_is_int(self.split_seed), "split_seed", self.split_seed, "an integer")
        _check(
            self.subset is None or (_is_int(self.subset) and self.subset > 0),
            "subset",
            self.subset,
            "a positive number of images or None",
        )
        _check(self.binarize in BINARIZE, "binarize", self.binarize, f"one of {', '.join(BINARIZE)}")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "vae"
    latent: int = 20
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    channels: int = 32  # conv-vae: channels of its first convolution (the second has twice as many)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        _check(self.kind in KINDS, "model", self.kind, f"one of {', '.join(KINDS)}")
        if not KINDS[self.kind].convolutional:  # a width the kind lacks: one value, so equal models compare equal
            object.__setattr__(self, "channels", 32)
        _check(_is_int(self.latent) and 1 <= self.latent <= 4096, "latent", self.latent, "an integer from 1 to 4096")
        _check(
            1 <= len(self.hidden) <= 8 and all(_is_int(h) and 1 <= h <= 16384 for h in self.hidden),
            "hidden",
            self.hidden,
            "1 to 8 layer widths, each from 1 to 16384",
        )
        _check(self.activation in ACTIVATIONS, "activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        _check(
            _is_int(self.channels) and 1 <= self.channels <= 512, "channels", self.channels, "an integer from 1 to 512"
        )


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
        _check(self.noise in NOISES, "noise", self.noise, f"one of {', '.join(NOISES)}")
        _check(
            _is_num(self.noise_level) and 0 <= self.noise_level <= 1,
            "noise_level",
            self.noise_level,
            "a number in [0, 1]",
        )
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(
            self.clip_grad is None or (_is_num(self.clip_grad) and self.clip_grad > 0),
            "clip_grad",
            self.clip_grad,
            "a number > 0 or None",
        )
        _check(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        _check(
            not (self.cuda_graph and self.device == "cpu"),
            "cuda_graph",
            self.cuda_graph,
            "False with device='cpu': a CUDA graph needs --device cuda (or auto)",
        )
        _check(self.objective in OBJECTIVES, "objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        _check(_is_int(self.k) and 1 <= self.k <= 5000, "k", self.k, "an integer from 1 to 5000")
        _check(self.objective == "iwae" or self.k == 1, "k", self.k, "1 unless objective='iwae'")
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")


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
        def build(kind, values):
            values = dict(values or {})
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"unknown {kind.__name__} field(s) {unknown}: expected some of {sorted(known)}")
            return kind(**values)

        unknown = sorted(set(d) - {"data", "model", "train"})
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}: expected data, model, train")
        return cls(
            build(DataConfig, d.get("data")), build(ModelConfig, d.get("model")), build(TrainConfig, d.get("train"))
        )

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
