"""How a study searches: the samplers that propose configurations and the pruners that stop trials early.

Every trial trains at the budget that is kept (the night's final epochs, early stopping included): the winner's
best epoch is the candidate, so nothing is chosen at one budget and retrained at another. The pruners cut the
cost instead: `asha` (the default) is asynchronous successive halving (Li et al. 2018, "A System for Massively
Parallel Hyperparameter Tuning") with rungs at min_epochs * 3^k, comparing a trial only with trials of the same
model kind: a convolutional VAE starts slower than an MLP and overtakes it after ~25 epochs on mnist-5k, so a
rung shared by both kinds would prune the kind that ends best (benchmarks/search_quality.py measures it).
The samplers and pruners were chosen from that benchmark's table (README, "Search quality").
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from vae.errors import ConfigError

SAMPLERS = ("tpe", "tpe-multivariate", "gp", "cmaes", "random")
PRUNERS = ("asha", "asha-global", "hyperband", "median", "none", "threshold:X")
REDUCTION = 3  # eta: a third of the trials at a rung go on to the next


def sampler_seed(seed: int | None, trials_so_far: int, worker: int = 0) -> int | None:
    """The sampler's seed for a worker that joins a study holding `trials_so_far` trials: the same command on
    the same study state draws the same points, while the next night (more trials) and another worker draw
    other ones (a random start-up would otherwise repeat the first night's points, and two workers each other's)."""
    if seed is None:
        return None
    return (seed * 1_000_003 + trials_so_far * 7_919 + worker * 104_729) % 2**31


def make_sampler(name: str, seed: int | None, startup: int | None = None) -> optuna.samplers.BaseSampler:
    """`startup`: trials drawn at random before the model-based samplers use the history (Optuna's defaults:
    TPE 10, GP 10, CMA-ES 1)."""
    if startup is not None and (not isinstance(startup, int) or isinstance(startup, bool) or startup < 0):
        raise ConfigError(f"startup_trials={startup!r} is invalid: expected an integer >= 0")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
        raise ConfigError(f"sampler_seed={seed!r} is invalid: expected an integer from 0 to 2**32 - 1 (numpy's seeds)")
    kw = {} if startup is None else {"n_startup_trials": startup}
    if name in ("tpe", "tpe-multivariate"):
        multi = name == "tpe-multivariate"  # one joint density over the parameters, grouped by which are drawn
        return optuna.samplers.TPESampler(seed=seed, multivariate=multi, group=multi, constant_liar=True, **kw)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **kw)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  (optional: CmaEsSampler needs the `cmaes` package)
        except ImportError:
            raise ConfigError(
                "sampler='cmaes' needs the cmaes package: pip install cmaes (or pick tpe, gp or random)"
            ) from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **kw)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler={name!r} is invalid: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int, min_epochs: int = 1) -> optuna.pruners.BasePruner:
    """`min_epochs`: the first rung (asha, hyperband) or the warm-up (median): no trial stops before it."""
    if not isinstance(min_epochs, int) or isinstance(min_epochs, bool) or not 1 <= min_epochs <= epochs:
        raise ConfigError(f"min_epochs={min_epochs!r} is invalid: expected an integer from 1 to epochs={epochs}")
    if name in ("asha", "asha-global"):
        return Halving(min_epochs, REDUCTION, by_kind=name == "asha")
    if name == "hyperband":  # brackets from min_epochs to the full budget
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=epochs, reduction_factor=REDUCTION)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_epochs - 1)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name.startswith("threshold:"):  # stop any trial whose val -ELBO is above X nats at any epoch
        try:
            return optuna.pruners.ThresholdPruner(upper=float(name.split(":", 1)[1]))
        except ValueError:
            pass
    raise ConfigError(f"pruner={name!r} is invalid: expected one of {', '.join(PRUNERS)}")


def kind_of(trial: FrozenTrial) -> str | None:
    """The model kind a trial trains (from its config, set when it starts), whether drawn or fixed."""
    return (trial.user_attrs.get("config") or {}).get("model", {}).get("kind")


class Halving(optuna.pruners.BasePruner):
    """Asynchronous successive halving: at each rung (epoch min_epochs * eta^k) a trial goes on only if its
    validation -ELBO there is among the best 1/eta of the trials that reached that rung so far, itself included
    (the first trial at a rung always goes on). by_kind: only trials of the same model kind are compared."""

    def __init__(self, min_epochs: int, eta: int = REDUCTION, by_kind: bool = True) -> None:
        self.min_epochs, self.eta, self.by_kind = min_epochs, eta, by_kind

    def is_rung(self, step: int) -> bool:
        k = math.log(step / self.min_epochs, self.eta) if step >= self.min_epochs else -1.0
        return k >= 0 and abs(k - round(k)) < 1e-9

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.is_rung(step):
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        kind = kind_of(trial)
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        peers = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=states)
            if t.number != trial.number and step in t.intermediate_values and (not self.by_kind or kind_of(t) == kind)
        ]
        ranked = sorted([*peers, value])
        return value > ranked[max(1, len(ranked) // self.eta) - 1]
