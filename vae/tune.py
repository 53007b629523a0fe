"""Hyper-parameter search: an Optuna study whose trials are fit() runs, on 1 process or N under torchrun.

Objective: validation -ELBO in nats per image after the last epoch, reported every epoch for the pruner.
Under torchrun rank 0 owns the Optuna trial; the other ranks follow through TorchDistributedTrial, which
broadcasts every suggest/report/should_prune, so a pruned trial raises TrialPruned in every rank. One process
group serves every trial of the job (fit() reuses it).

Many workers (`vae tune` processes, each possibly a torchrun job) may share one study: before each trial rank 0
counts the study's trials, under a lock held until its new trial exists, and stops at `n_trials`. (Where no
lock is available, a MySQL storage say, a trial created past the count in a race is recorded as failed with
the user attribute `surplus` and not counted.) With an RDB storage, trials send heartbeats: a
worker killed mid-trial leaves a trial that the next worker marks failed and re-queues with the same
parameters (RetryHeartbeatStaleTrialCallback), so a rerun of the same command completes the study.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vae.config import MODELS, Config
from vae.errors import ConfigError, DivergedError

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
    "lr": (float, "train", "lr"), "beta": (float, "train", "beta"), "batch_size": (int, "train", "batch_size"),
    "latent": (int, "model", "latent"), "model": (str, "model", "kind"), "activation": (str, "model", "activation"),
    "hidden_width": (int, "model", "hidden"), "hidden_depth": (int, "model", "hidden"),
    "lr_schedule": (str, "train", "lr_schedule"),
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "median", "none", "threshold:X")


class _TrialFailed(Exception):
    """A diverged trial: recorded as FAIL with its reason, the study goes on."""


class _Surplus(Exception):
    """A trial created after the study already had n_trials (two workers asked at the same moment)."""


# ---------------------------------------------------------------------------------------------- search space
def load_space(source: str | Path | Mapping[str, Any] | None, base: Config) -> dict[str, dict[str, Any]]:
    """The default space with a file's (TOML or YAML) or a mapping's entries overriding it, validated whole:
    a bad entry raises ConfigError naming it, before any trial starts."""
    where = "search space"
    overrides: Mapping[str, Any] = {}
    if isinstance(source, (str, Path)):
        path, where = Path(source), f"space file {source}"
        if not path.is_file():
            raise ConfigError(f"{where} does not exist: expected a TOML or YAML file")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml
                overrides = yaml.safe_load(path.read_text()) or {}
            else:
                import tomllib
                overrides = tomllib.loads(path.read_text())
        except Exception as e:  # a syntax error: say where, in one line
            raise ConfigError(f"{where} cannot be parsed: {str(e).splitlines()[0]}") from None
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{where} is invalid: expected a table of parameters, e.g. [lr] low = 1e-4 high = 1e-2")
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


def _check_entry(name: str, spec: dict[str, Any], base: Config, where: str) -> None:
    kind = PARAMS[name][0]

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{where}: [{name}] {msg}")

    keys = set(spec)
    if keys - {"low", "high", "log", "step", "choices", "value"}:
        raise bad(f"has unknown key(s) {sorted(keys - {'low', 'high', 'log', 'step', 'choices', 'value'})}: "
                  f"expected low/high (log, step), choices, or value")
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
        values = [lo, hi]
    for v in values:
        if name == "model" and v not in MODELS[:1] + MODELS[2:]:
            raise bad(f"model={v!r} is invalid in a search: the objective is the validation -ELBO, expected "
                      f"vae or conv-vae")
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
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                               log=spec.get("log", False))
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


# ------------------------------------------------------------------------------------- storage, sampler, pruner
def default_storage() -> str:
    return f"sqlite:///{Path.cwd().resolve() / 'mlruns' / 'optuna.db'}"


def redact(url: str) -> str:
    """A storage URL without its password, for logs and tags."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, heartbeat: int | None = 30) -> optuna.storages.BaseStorage:
    """`journal:PATH` (Optuna's journal file; no heartbeats), or any SQLAlchemy URL (sqlite:///PATH,
    postgresql://...). Heartbeats every `heartbeat` s; a trial silent for 2x that is failed and retried."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        lock = None
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 30}}  # several workers write to one file
            lock = _flock(db.with_name(db.name + ".lock"))
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                      "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if lock is not None:
                with lock:  # first contact with a fresh file creates its tables: one process at a time
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            import sqlalchemy.exc
            for attempt in range(4):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
                except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                    # Two workers creating the tables of a fresh database at once: the loser finds them next time.
                    if attempt == 3:
                        raise
                    time.sleep(0.5 + attempt)
    except ConfigError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"storage {redact(url)} cannot be opened ({type(e).__name__}: {msg[:300]}): expected "
                          f"sqlite:///PATH, a reachable postgresql://USER@HOST/DB, or journal:PATH") from None


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive lock on a file beside the database (vae.tracking has the same for MLflow's; this one
    keeps `vae tune --nproc` from importing mlflow just to check a storage URL)."""
    import fcntl
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file drops the lock


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler={name!r} is invalid: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":  # brackets from 1 epoch to the full budget
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name.startswith("threshold:"):  # stop any trial whose val -ELBO is above X nats at any epoch
        try:
            return optuna.pruners.ThresholdPruner(upper=float(name.split(":", 1)[1]))
        except ValueError:
            pass
    raise ConfigError(f"pruner={name!r} is invalid: expected one of {', '.join(PRUNERS)}")


class _AskLock:
    """Held by a worker's rank 0 from counting the study's trials until its new trial exists, so two workers
    cannot both see n-1 trials and both start one (and while it finds or makes the study's MLflow parent run). A file lock beside a SQLite or journal file, an advisory
    lock in PostgreSQL; other databases get none (a trial created past the count is then marked surplus)."""

    def __init__(self, url: str, study: str) -> None:
        import hashlib
        self.url, self.key = url, int.from_bytes(hashlib.sha256(study.encode()).digest()[:8], "big", signed=True)
        self.path = None
        if url.startswith("sqlite:///"):
            self.path = Path(url[len("sqlite:///"):] + f".{self.key & 0xffffffff:x}.ask.lock")
        elif url.startswith("journal:"):
            self.path = Path(url[len("journal:"):] + f".{self.key & 0xffffffff:x}.ask.lock")
        self.handle = self.conn = None
        self.held = False

    def acquire(self) -> None:
        if self.path is not None:
            import fcntl
            self.handle = open(self.path, "a")
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        elif self.url.startswith("postgresql"):
            import sqlalchemy
            if self.conn is None:
                self.conn = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool).connect()
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            self.conn.commit()
            self.held = True

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None
        elif self.held:
            import sqlalchemy
            self.conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.conn.commit()
            self.held = False


def _counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that make up the study's count: not surplus ones, not failed ones that a retry replaced."""
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if not t.user_attrs.get("surplus")
            and not (t.state == TrialState.FAIL and t.number in replaced)]


def _next_action(study: optuna.Study, n_trials: int, deadline: float | None, heartbeat: bool) -> str:
    if deadline is not None and time.time() >= deadline:
        return "stop"
    if heartbeat:  # a killed worker's trial becomes FAIL and is re-queued as WAITING
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials) or len(_counted(trials)) < n_trials:
        return "run"
    # The count is reached, but a trial still running elsewhere may yet die and be re-queued: wait for it.
    if heartbeat and any(t.state == TrialState.RUNNING for t in trials):
        return "wait"
    return "stop"


# ----------------------------------------------------------------------------------------------- the objective
@dataclass
class _Objective:
    study: optuna.Study | None  # None on ranks > 0
    base: Config
    space: dict[str, dict[str, Any]]
    data: Any
    ctx: Any
    out: Path
    n_trials: int
    tracker: Any  # vae.tracking.StudyTracker on rank 0, else None
    lock: _AskLock | None = None  # rank 0: held from the count until the trial exists
    ran: int = 0

    def __call__(self, trial: optuna.Trial | None) -> float:
        from optuna_integration import TorchDistributedTrial

        from vae.distributed import broadcast_object
        from vae.training import fit
        main = self.ctx.is_main
        surplus, tracked_from, run_id = False, 0.0, None
        if main:
            self.lock.release()
            trials = self.study.get_trials(deepcopy=False)
            retry = any(t.number == trial.number and t.system_attrs.get("retry_history") for t in trials)
            surplus = not retry and len(_counted([t for t in trials if t.number < trial.number])) >= self.n_trials
            folder = self.out / f"trial-{trial.number}"
            if not surplus and folder.exists():  # left by a study of the same name whose storage was deleted
                shutil.rmtree(folder)
        if broadcast_object(surplus if main else None, self.ctx):
            if main:
                trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already has {self.n_trials} trials")
        t = TorchDistributedTrial(trial) if self.ctx.is_distributed else trial
        folder = self.out / f"trial-{t.number}"
        params = suggest(t, self.space)
        cfg = to_config(self.base, params)
        if main:
            self.ran += 1
            tracked_from = self.tracker.seconds
            trial.set_user_attr("config", cfg.to_dict())
            trial.set_user_attr("nproc", self.ctx.world_size)
            run_id = self.tracker.start_trial(trial.number, params, {
                "epochs": cfg.train.epochs, "dataset": cfg.data.dataset, "subset": cfg.data.subset,
                "nproc": self.ctx.world_size, "hidden": ",".join(map(str, cfg.model.hidden))})
            trial.set_user_attr("mlflow_run_id", run_id)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            value = row["val_neg_elbo"]
            if main:
                self.tracker.log_epoch(run_id, epoch, row)
            if not math.isfinite(value):  # all-reduced, so every rank sees the same value
                raise DivergedError(f"val -ELBO is {value} at epoch {epoch}")
            t.report(value, epoch)
            if t.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: val -ELBO {value:.2f} nats")

        # Seconds: training (fit, less the MLflow calls made from its callback) and tracking (every MLflow
        # call of the trial, from creating its run to ending it), kept on the trial for the benchmark.
        t0, in_fit = time.perf_counter(), self.tracker.seconds if main else 0.0

        def account() -> None:
            trial.set_user_attr("train_seconds", time.perf_counter() - t0 - (self.tracker.seconds - in_fit))

        try:
            result = fit(cfg, out=folder, data=self.data, callbacks=[on_epoch])
        except Exception as e:  # pruned, diverged, or a bug: the trial's MLflow run ends in every case
            if main:
                account()
                state = "pruned" if isinstance(e, optuna.TrialPruned) else "fail"
                reason = str(e) if isinstance(e, (optuna.TrialPruned, DivergedError)) else repr(e)
                trial.set_user_attr("fail_reason" if state == "fail" else "pruned_reason", reason)
                self.tracker.end_trial(run_id, state, reason=reason)
                trial.set_user_attr("tracking_seconds", self.tracker.seconds - tracked_from)
                shutil.rmtree(folder, ignore_errors=True)  # only complete trials can become the model
            if isinstance(e, DivergedError):
                raise _TrialFailed(str(e)) from None
            raise
        value = result.metrics["val_neg_elbo"]
        if main:
            account()
            trial.set_user_attr("checkpoint", str(Path(result.checkpoint).resolve()))
            final = {k: v for k, v in result.metrics.items() if k.startswith(("val_", "train_"))}
            self.tracker.end_trial(run_id, "complete", metrics=final)
            trial.set_user_attr("tracking_seconds", self.tracker.seconds - tracked_from)
        return value


# --------------------------------------------------------------------------------------------------- the API
def tune(base: Config, n_trials: int, *, study: str | None = None, storage: str | None = None,
         timeout: float | None = None, sampler: str = "tpe", pruner: str = "hyperband",
         space: str | Path | Mapping[str, Any] | None = None, out: str | Path | None = None,
         tracking_uri: str | None = None, experiment: str = "vae-tune", seed: int | None = None,
         heartbeat: int | None = 30) -> dict[str, Any]:
    """Run trials of `study` until it holds n_trials (or `timeout` s pass); returns the study's summary
    (on rank 0; other ranks return {"rank": r}). Each trial trains base with drawn parameters for
    base.train.epochs epochs; its checkpoint stays in out/trial-<n>/ when it completes."""
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"trials={n_trials!r} is invalid: expected an integer >= 1")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout={timeout!r} is invalid: expected a number of seconds > 0")
    if heartbeat is not None and heartbeat < 0:
        raise ConfigError(f"heartbeat={heartbeat!r} is invalid: expected seconds >= 0 (0: no heartbeats)")
    resolved = load_space(space, base)
    make_sampler(sampler, seed)
    make_pruner(pruner, base.train.epochs)
    study_name = study or "vae-" + re.sub(r"[^\w.-]", "_", base.data.dataset)
    storage_url = storage or default_storage()
    folder = Path(out) if out is not None else Path("mlruns") / "studies" / study_name
    base = base.replace(train={"progress": False})
    deadline = time.time() + timeout if timeout else None

    from vae.data import load
    from vae.distributed import barrier, broadcast_object, distributed
    optuna.logging.set_verbosity(optuna.logging.INFO)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with distributed(base.train.device) as ctx:
        data = load(base.data, download=True) if ctx.is_main else None
        barrier(ctx)
        data = data or load(base.data, download=False)
        st = tracker = lock = None
        if ctx.is_main:
            lock = _AskLock(storage_url, study_name)
            st, tracker = _open(study_name, storage_url, resolved, base, data.fingerprint, sampler, seed, pruner,
                                heartbeat, tracking_uri, experiment, lock)
        objective = _Objective(st, base, resolved, data, ctx, folder, n_trials, tracker, lock)
        t_start = time.perf_counter()
        hb = bool(heartbeat) and not storage_url.startswith("journal:")
        while True:
            action = None
            if ctx.is_main:
                lock.acquire()
                action = _next_action(st, n_trials, deadline, hb)
                if action != "run":
                    lock.release()
            action = broadcast_object(action, ctx)
            if action == "stop":
                break
            if action == "wait":
                if ctx.is_main:
                    time.sleep(1.0)
                continue
            if ctx.is_main:
                try:
                    st.optimize(objective, n_trials=1, catch=(_TrialFailed, _Surplus))
                finally:
                    lock.release()
            else:
                try:
                    objective(None)
                except (optuna.TrialPruned, _TrialFailed) as e:  # rank 0's log tells the rest
                    print(f"rank {ctx.rank}: left the trial: {e}", file=sys.stderr, flush=True)
                except _Surplus:
                    pass
    if not ctx.is_main:
        return {"rank": ctx.rank}
    t_finish = time.perf_counter()
    summary = _finish(st, tracker, base, resolved, storage_url, n_trials, folder, objective.ran,
                      t_finish - t_start)
    summary["finish_seconds"] = round(time.perf_counter() - t_finish, 3)  # figures, table, best model
    return summary


def _open(name, url, space, base, fingerprint, sampler, seed, pruner, heartbeat, tracking_uri, experiment, lock):
    """Create or load the study, check a resumed one matches, and attach its MLflow parent run (under the
    study's lock, so that workers starting together agree on one parent)."""
    from vae.tracking import StudyTracker, git_commit, space_tag
    st = optuna.create_study(storage=open_storage(url, heartbeat), study_name=name, direction="minimize",
                             sampler=make_sampler(sampler, seed), pruner=make_pruner(pruner, base.train.epochs),
                             load_if_exists=True)
    mine = {"space": space, "base_config": _comparable(base), "fingerprint": fingerprint}
    attrs = st.user_attrs
    for key, value in mine.items():
        if key in attrs and json.dumps(attrs[key], sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ConfigError(f"study {name!r} in {redact(url)} was created with another {key.replace('_', ' ')} "
                              f"({json.dumps(attrs[key], sort_keys=True)[:300]}): rerun with the same settings "
                              f"to continue it, or pick a new --study")
        if key not in attrs:
            st.set_user_attr(key, value)
    tracker = StudyTracker(tracking_uri, experiment)
    key = f"{redact(url)}#{name}"
    tags = {"optuna.study": name, "optuna.storage": redact(url), "dataset": base.data.dataset,
            "dataset_fingerprint": fingerprint, "search_space": space_tag(space), "epochs": base.train.epochs,
            "sampler": sampler, "pruner": pruner, "mlflow.source.git.commit": git_commit() or "unknown"}
    lock.acquire()
    try:
        attrs = st.user_attrs  # read again under the lock: another worker may have just made the parent
        known = attrs.get("mlflow_parent_run_id") if attrs.get("mlflow_tracking_uri") == tracker.uri else None
        parent = tracker.attach_parent(re.sub(r"[^\w.-]", "_", key), name, known, tags)
        if parent != known:
            st.set_user_attr("mlflow_parent_run_id", parent)
            st.set_user_attr("mlflow_tracking_uri", tracker.uri)
    finally:
        lock.release()
    return st, tracker


def _comparable(base: Config) -> dict[str, Any]:
    d = base.to_dict()
    for k in ("device", "progress", "bf16"):  # how a trial runs, not what it computes
        d["train"].pop(k)
    return d


def _figures(study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's plots as PNGs, and every trial as a CSV row; returns what was skipped and why."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis
    skipped = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    plots = {"optimization_history": vis.plot_optimization_history, "parallel_coordinate": vis.plot_parallel_coordinate,
             "param_importances": vis.plot_param_importances}
    for name, plot in plots.items():
        if len(complete) < (2 if name == "param_importances" else 1):
            need = "2 complete trials" if name == "param_importances" else "a complete trial"
            skipped.append(f"{name}: needs {need}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.savefig(folder / f"{name}.png", dpi=90, bbox_inches="tight")
            plt.close(fig)
        except Exception as e:  # e.g. importances when every completed trial drew the same values
            skipped.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    df = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    df.drop(columns=[c for c in df.columns if c in ("user_attrs_config",)], errors="ignore").to_csv(
        folder / "trials.csv", index=False)
    return skipped


def _finish(st: optuna.Study, tracker, base: Config, space, storage_url: str, n_trials: int, folder: Path,
            ran: int, seconds: float) -> dict[str, Any]:
    trials = st.get_trials(deepcopy=False)
    for t in trials:  # a killed worker's child run would otherwise stay RUNNING in MLflow
        if t.state == TrialState.FAIL and t.user_attrs.get("mlflow_run_id") and not t.user_attrs.get("fail_reason"):
            tracker.close_orphan(t.user_attrs["mlflow_run_id"], "worker lost: heartbeat stale, trial re-queued")
    counts = {s: sum(t.state == getattr(TrialState, s.upper()) for t in trials)
              for s in ("complete", "pruned", "fail", "running", "waiting")}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    logged = best is not None and st.user_attrs.get("best_model_trial") == best.number
    model_uri = st.user_attrs.get("best_model_uri") if logged else None
    if best is not None and model_uri is None:
        ckpt = Path(best.user_attrs.get("checkpoint", ""))
        if ckpt.is_file():  # absent when another machine's worker ran the best trial
            model_uri = tracker.log_model(best.user_attrs["mlflow_run_id"], ckpt)
            st.set_user_attr("best_model_uri", model_uri)
            st.set_user_attr("best_model_trial", best.number)
    with tempfile.TemporaryDirectory() as tmp:
        skipped = _figures(st, Path(tmp))
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        if best is not None:
            metrics["best_val_neg_elbo"] = best.value
        tracker.finish_parent(Path(tmp), metrics, {"best_trial": best.number if best else "none",
                                                   "best_params": json.dumps(best.params) if best else "{}",
                                                   "figures_skipped": "; ".join(skipped) or "none"})
    return {
        "study": st.study_name, "storage": redact(storage_url), "n_trials": n_trials,
        "trials": len(_counted(trials)), "counts": counts,
        "surplus": sum(bool(t.user_attrs.get("surplus")) for t in trials),
        "best_trial": best.number if best else None, "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_config": best.user_attrs.get("config") if best else None,
        "parent_run_id": tracker.parent_id, "experiment_id": tracker.experiment_id, "tracking_uri": tracker.uri,
        "best_model_uri": model_uri, "out": str(folder), "trials_run_here": ran, "seconds": round(seconds, 3),
        "search_space": space, "figures_skipped": skipped,
    }
