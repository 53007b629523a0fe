"""`tune()`: an Optuna study whose trials are fit() runs, on 1 process or N under torchrun, tracked in MLflow
(or, with tracking=False / `vae tune --no-tracking`, not: vae/tune/untracked.py, and mlflow is never imported).

Objective: validation -ELBO in nats per image after the last epoch, reported every epoch for the pruner
(vae/tune/objective.py). The study lives in a storage shared by any number of workers (vae/tune/storage.py);
the search space is vae/tune/space.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from vae.config import Config
from vae.data import describe, load
from vae.distributed import DistContext, barrier, broadcast_object, distributed
from vae.errors import ConfigError
from vae.stores import default_study_storage, redact
from vae.tune.objective import Bookkeeper, Objective, Surplus, TrialFailed
from vae.tune.search import make_pruner, make_sampler, sampler_seed
from vae.tune.seeds import ANCHOR, RECIPE, anchor_configs, enqueue_first
from vae.tune.space import load_space, space_tag
from vae.tune.storage import AskLock, counted, next_action, open_storage
from vae.tune.summary import summarize
from vae.tune.untracked import NullTracker

if TYPE_CHECKING:
    from vae.tracking.study import StudyTracker


@dataclass(frozen=True)
class TuneSettings:
    """How a study is run and where it lives; validated at construction (ConfigError naming the field)."""

    n_trials: int
    study: str | None = None  # default: vae-<dataset>
    storage: str | None = None  # default: sqlite:///<cwd>/mlruns/optuna.db
    timeout: float | None = None  # start no new trial after this many seconds
    sampler: str = "tpe"
    pruner: str = "asha"
    min_epochs: int = 3  # the pruner's first rung (rungs 3, 9, 27 of 50): no trial stops before it
    startup_trials: int | None = None  # random trials before a model-based sampler uses the history
    anchors: bool = True  # a new study also starts from the default space's anchor (vae/tune/seeds.py)
    space: str | Path | Mapping[str, Any] | None = field(default=None, hash=False)
    out: str | Path | None = None  # default: mlruns/studies/<study>
    tracking: bool = True  # False: no MLflow at all, nothing logged (vae/tune/untracked.py)
    tracking_uri: str | None = None
    experiment: str = "vae-tune"
    parent_run_id: str | None = None  # the MLflow run the study run hangs under (the pipeline's night)
    sampler_seed: int | None = None  # seed of the sampler (the trials' weights have base.train.seed)
    heartbeat: int | None = 30  # seconds; 0 or None: no heartbeats

    def __post_init__(self) -> None:
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"trials={self.n_trials!r} is invalid: expected an integer >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout={self.timeout!r} is invalid: expected a number of seconds > 0")
        if self.heartbeat is not None and self.heartbeat < 0:
            raise ConfigError(f"heartbeat={self.heartbeat!r} is invalid: expected seconds >= 0 (0: no heartbeats)")
        if not self.tracking and (self.tracking_uri or self.parent_run_id):
            name = "tracking_uri" if self.tracking_uri else "parent_run_id"
            raise ConfigError(
                f"{name}={getattr(self, name)!r} is invalid with tracking=False (--no-tracking): an untracked "
                f"study logs nothing to MLflow; drop --{name.replace('_', '-')} or --no-tracking"
            )
        make_sampler(self.sampler, self.sampler_seed, self.startup_trials)

    def study_name(self, base: Config) -> str:
        return self.study or "vae-" + re.sub(r"[^\w.-]", "_", base.data.dataset)

    def storage_url(self) -> str:
        return self.storage or default_study_storage()

    def folder(self, base: Config) -> Path:
        return Path(self.out) if self.out is not None else Path("mlruns") / "studies" / self.study_name(base)

    def check(self, base: Config) -> dict[str, dict[str, Any]]:
        """Everything that can be wrong before a trial starts; returns the resolved search space."""
        self.pruner_for(base)
        return load_space(self.space, base)

    def pruner_for(self, base: Config) -> optuna.pruners.BasePruner:
        return make_pruner(self.pruner, base.train.epochs, min(self.min_epochs, base.train.epochs))


def tune(base: Config, n_trials: int, **settings: Any) -> dict[str, Any]:
    """Run trials until the study holds n_trials (or `timeout` s pass); see TuneSettings for the keywords.
    Returns the study's summary on rank 0 (other ranks return {"rank": r}). Each trial trains base with
    drawn parameters for base.train.epochs epochs; its checkpoint stays in out/trial-<n>/ if it completes."""
    return run_study(base, TuneSettings(n_trials, **settings))


def run_study(base: Config, s: TuneSettings) -> dict[str, Any]:
    space = s.check(base)
    base = base.replace(train={"progress": False})
    # Optuna's trial lines at INFO, unless `vae -q` (or the caller's logging) asks for less.
    optuna.logging.set_verbosity(max(logging.INFO, logging.getLogger("vae").getEffectiveLevel()))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with distributed(base.train.device) as ctx:
        data = load(base.data, download=True) if ctx.is_main else None
        barrier(ctx)
        data = data or load(base.data, download=False)
        study = book = None
        if ctx.is_main:
            lock = AskLock(s.storage_url(), s.study_name(base))
            study, tracker = open_study(s, base, space, data.fingerprint, lock)
            book = Bookkeeper(study, tracker, lock, s.folder(base), s.n_trials, describe(data, base.data))
        objective = Objective(base, space, data, ctx, s.folder(base), book)
        t_start = time.perf_counter()
        _trial_loop(ctx, study, objective, s)
    if not ctx.is_main:
        return {"rank": ctx.rank}
    t_finish = time.perf_counter()
    summary = summarize(
        study, book.tracker, space, s.storage_url(), s.n_trials, s.folder(base), book.ran, t_finish - t_start
    )
    summary["finish_seconds"] = round(time.perf_counter() - t_finish, 3)  # figures, table, best model
    return summary


def _trial_loop(ctx: DistContext, study: optuna.Study | None, objective: Objective, s: TuneSettings) -> None:
    """Rank 0 decides each round (run, wait or stop) under the ask lock and tells the others."""
    deadline = time.time() + s.timeout if s.timeout else None
    heartbeat = bool(s.heartbeat) and not s.storage_url().startswith("journal:")
    bar = tqdm(
        total=s.n_trials,
        desc="trials",
        unit="trial",
        disable=None if ctx.is_main else True,
        file=sys.stderr,
        initial=len(counted(study.get_trials(deepcopy=False))) if study else 0,
    )
    with bar:
        while True:
            action = None
            if ctx.is_main:
                objective.book.lock.acquire()
                action = next_action(study, s.n_trials, deadline, heartbeat)
                if action != "run":
                    objective.book.lock.release()
            action = broadcast_object(action, ctx)
            if action == "stop":
                break
            if action == "wait":
                if ctx.is_main:
                    time.sleep(1.0)
                continue
            if ctx.is_main:
                try:
                    study.optimize(objective, n_trials=1, catch=(TrialFailed, Surplus))
                finally:
                    objective.book.lock.release()
                bar.update(len(counted(study.get_trials(deepcopy=False))) - bar.n)
            else:
                _follow(ctx, objective)


def _follow(ctx: DistContext, objective: Objective) -> None:
    try:
        objective(None)
    except (optuna.TrialPruned, TrialFailed) as e:  # rank 0's log tells the rest
        print(f"rank {ctx.rank}: left the trial: {e}", file=sys.stderr, flush=True)
    except Surplus:
        pass


def open_study(
    s: TuneSettings, base: Config, space: dict[str, Any], fingerprint: str, lock: AskLock
) -> tuple[optuna.Study, StudyTracker | NullTracker]:
    """Create or load the study, check a resumed one matches, and attach its MLflow parent run (under the
    study's lock, so that workers starting together agree on one parent) unless tracking is off."""
    name, url = s.study_name(base), s.storage_url()
    st = optuna.create_study(
        storage=open_storage(url, s.heartbeat),
        study_name=name,
        direction="minimize",
        pruner=s.pruner_for(base),
        load_if_exists=True,
    )
    _check_settings(st, url, {"space": space, "base_config": _comparable(base), "fingerprint": fingerprint})
    _first_trials_and_sampler(st, s, base, space, lock)
    if not s.tracking:
        return st, NullTracker()
    from vae.tracking.study import StudyTracker  # lazy: mlflow (~1.5 s to import), which an untracked study lacks

    tracker = StudyTracker(s.tracking_uri, s.experiment, s.parent_run_id)
    tags = {
        "optuna.study": name,
        "optuna.storage": redact(url),
        "dataset": base.data.dataset,
        "dataset_fingerprint": fingerprint,
        "search_space": space_tag(space),
        "epochs": base.train.epochs,
        "sampler": s.sampler,
        "pruner": s.pruner,
    }
    lock.acquire()
    try:
        attrs = st.user_attrs  # read again under the lock: another worker may have just made the parent
        known = attrs.get("mlflow_parent_run_id") if attrs.get("mlflow_tracking_uri") == tracker.uri else None
        parent = tracker.attach_parent(re.sub(r"[^\w.-]", "_", f"{redact(url)}#{name}"), name, known, tags)
        if parent != known:
            st.set_user_attr("mlflow_parent_run_id", parent)
            st.set_user_attr("mlflow_tracking_uri", tracker.uri)
    finally:
        lock.release()
    return st, tracker


def _check_settings(st: optuna.Study, url: str, mine: dict[str, Any]) -> None:
    """A resumed study must have been created with these settings; a new one records them."""
    attrs = st.user_attrs
    for key, value in mine.items():
        if key in attrs and json.dumps(attrs[key], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ConfigError(
                f"study {st.study_name!r} in {redact(url)} was created with another {key.replace('_', ' ')} "
                f"({json.dumps(attrs[key], sort_keys=True)[:300]}): rerun with the same settings "
                f"to continue it, or pick a new --study"
            )
        if key not in attrs:
            st.set_user_attr(key, value)


def _first_trials_and_sampler(st: optuna.Study, s: TuneSettings, base: Config, space: dict, lock: AskLock) -> None:
    """Under the lock: workers starting together queue a new study's first trials once (vae/tune/seeds.py), and
    each draws with its own seed."""
    lock.acquire()
    try:
        trials = st.get_trials(deepcopy=False)
        if not trials:
            anchors = [(cfg, ANCHOR, {}) for cfg in anchor_configs(space, base)] if s.anchors else []
            enqueue_first(st, [(base, RECIPE, {}), *anchors], space, base, s.n_trials)
        worker = int(os.environ.get("VAE_TUNE_WORKER", "0"))
        started = sum(t.state != TrialState.WAITING for t in trials)  # queued ones (the recipe) do not count
        st.sampler = make_sampler(s.sampler, sampler_seed(s.sampler_seed, started, worker), s.startup_trials)
    finally:
        lock.release()


def _comparable(base: Config) -> dict[str, Any]:
    d = base.to_dict()
    for k in ("device", "progress", "bf16", "cuda_graph"):  # how a trial runs, not what it computes
        d["train"].pop(k)
    if d["train"]["patience"] is None:  # studies made before early stopping existed stay comparable
        d["train"].pop("patience")
    return d
