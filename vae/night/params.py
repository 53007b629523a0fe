"""The parameters of a night, declared once."""

from __future__ import annotations

from dataclasses import dataclass

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import ConfigError
from vae.stores import default_study_storage, default_tracking_uri
from vae.tracking import identity
from vae.tune import search


@dataclass(frozen=True)
class PipelineParams:
    """The parameters of a night, declared once: the flow `vae-pipeline` takes exactly these (its signature is
    made from them), `python -m flows.pipeline` offers each as --name, the deployments pass only what they
    change. The defaults are the default night, as `make run` runs it and benchmarks/search_quality.py measures
    it (README "Search quality")."""

    dataset: str = "mnist-5k"
    trials: int = 8  # trials a night adds to its study (a new study: the recipe, the anchor and 6 drawn ones)
    epochs: int = 50  # every trial's budget: the winning trial's best epoch is the candidate
    min_epochs: int = 3  # the pruner's first rung (asha: rungs 3, 9, 27 of 50 epochs); no trial stops before it
    sampler: str = "tpe"  # tpe, tpe-multivariate, gp, cmaes, random (vae/tune/search.py)
    pruner: str = "asha"  # asha (within each model kind), asha-global, hyperband, median, none
    sampler_seed: int | None = 0  # the same night on the same data and study draws the same trials; None: fresh
    startup_trials: int | None = 4  # random trials before the sampler models the history (None: its own default)
    nproc: int = 1
    subset: int | None = None  # train on fewer images (quick runs and tests)
    study: str | None = None  # default: <model>-<fingerprint[:8]>-<settings hash[:8]> (vae/tune/nightly.py)
    storage: str | None = None  # Optuna storage URL; default: sqlite under mlruns/
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI or sqlite under mlruns/
    model_name: str | None = None  # registered model; default vae-<dataset> (a folder's: name + path hash)
    min_improvement: float = 0.5  # nats of test -ELBO a challenger must gain to become champion
    max_fid_increase: float | None = None  # also refuse a challenger whose sample_fid is this much above the champion's
    iw_samples: int = 100
    workdir: str = "runs/pipeline"
    task_timeout: int = 6 * 3600  # seconds a tuning or training step may take before it is killed
    space: str | None = None  # search space file (TOML/YAML) for `vae tune --space`; default: the built-in space
    workers: int = 1  # trials at once: `vae tune --workers`, each worker with its share of the cores (GPUs)
    patience: int | None = 5  # early stopping of every trial (epochs without a better val -ELBO); None: off
    require_approval: bool = False  # pause before `champion` moves until a reviewer approves (Prefect server only)
    approval_timeout: int = 24 * 3600  # seconds a sign-off may take; then the run fails and the champion stays
    switch_data: bool = False  # move model_name to this data set from the one it holds (else refused, exit 2)

    def __post_init__(self) -> None:
        DataConfig(dataset=self.dataset, subset=self.subset)  # validates the data fields
        for name in (
            "trials",
            "epochs",
            "min_epochs",
            "nproc",
            "iw_samples",
            "task_timeout",
            "workers",
            "approval_timeout",
        ):
            v = getattr(self, name)
            low = 0 if name == "iw_samples" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{name}={v!r} is invalid: expected an integer >= {low}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigError(
                f"patience={self.patience!r} is invalid: expected an integer >= 1, or None (no early stop)"
            )
        if self.sampler_seed is not None and (not isinstance(self.sampler_seed, int) or self.sampler_seed < 0):
            raise ConfigError(f"sampler_seed={self.sampler_seed!r} is invalid: expected an integer >= 0, or None")
        search.make_sampler(self.sampler, self.sampler_seed, self.startup_trials)
        search.make_pruner(self.pruner, self.epochs, min(self.min_epochs, self.epochs))
        for name in ("require_approval", "switch_data"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected true or false")
        if not isinstance(self.min_improvement, (int, float)) or not self.min_improvement >= 0:
            raise ConfigError(f"min_improvement={self.min_improvement!r} is invalid: expected nats >= 0")
        if self.max_fid_increase is not None and (
            not isinstance(self.max_fid_increase, (int, float)) or not self.max_fid_increase >= 0
        ):
            raise ConfigError(
                f"max_fid_increase={self.max_fid_increase!r} is invalid: "
                "expected a number >= 0, or None (no sample gate)"
            )
        if (
            self.model_name is not None
            and not self.model_name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise ConfigError(f"model_name={self.model_name!r} is invalid: expected letters, digits, '-', '_' or '.'")

    @property
    def registered_name(self) -> str:
        return self.model_name or identity.model_name(self.dataset)

    def storage_url(self) -> str:
        return self.storage or default_study_storage()

    def tune_base(self) -> Config:
        """The base config `vae tune` builds from the same arguments (the study's settings come from it): the
        seed recipe at the night's budget, which is also the study's trial 0."""
        return Config(
            DataConfig(dataset=self.dataset, subset=self.subset),
            ModelConfig(),
            TrainConfig(epochs=self.epochs, progress=False, patience=self.patience),
        )

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()
