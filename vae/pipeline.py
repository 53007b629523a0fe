"""The pipeline's steps as plain functions: flows/pipeline.py wraps each in a Prefect task.

Tuning and training run as `vae ... --json` subprocesses (torchrun when nproc > 1), never as forks inside
the orchestrator. Evaluation, logging and registration run in-process. Every step takes and returns
small JSON-able dicts, so Prefect can persist them and reuse them when a rerun reaches the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vae import data as datasets
from vae.api import evaluate
from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.data import load
from vae.errors import ConfigError, VAEError
from vae.evaluation import evaluate as evaluate_model
from vae.lifetime import PARENT_ENV
from vae.stores import default_study_storage, default_tracking_uri
from vae.tracking import candidate, night_runs, promotion, registry
from vae.tracking.store import configure
from vae.tune import nightly

Log = Callable[[str], None]


@dataclass(frozen=True)
class PipelineParams:
    dataset: str = "mnist-5k"
    trials: int = 4
    tune_epochs: int = 3
    epochs: int = 10  # the full budget for the best configuration
    nproc: int = 1
    subset: int | None = None  # train on fewer images (quick runs and tests)
    study: str | None = None  # default: <model>-<fingerprint[:8]>-<settings hash[:8]> (vae/tune/nightly.py)
    storage: str | None = None  # Optuna storage URL; default: sqlite under mlruns/
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI or sqlite under mlruns/
    model_name: str | None = None  # registered model; default vae-<dataset>
    min_improvement: float = 0.5  # nats of test -ELBO a challenger must gain to become champion
    iw_samples: int = 100
    workdir: str = "runs/pipeline"
    task_timeout: int = 6 * 3600  # seconds a tuning or training step may take before it is killed
    space: str | None = None  # search space file (TOML/YAML) for `vae tune --space`; default: the built-in space
    workers: int = 1  # trials at once: `vae tune --workers`, each worker with its share of the cores (GPUs)
    patience: int | None = 5  # early stopping of the final training (epochs without a better val -ELBO); None: off
    require_approval: bool = False  # pause before `champion` moves until a reviewer approves (Prefect server only)
    approval_timeout: int = 24 * 3600  # seconds a sign-off may take; then the run fails and the champion stays

    def __post_init__(self) -> None:
        DataConfig(dataset=self.dataset, subset=self.subset)  # validates the data fields
        for name in (
            "trials",
            "tune_epochs",
            "epochs",
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
        if not isinstance(self.require_approval, bool):
            raise ConfigError(f"require_approval={self.require_approval!r} is invalid: expected true or false")
        if not isinstance(self.min_improvement, (int, float)) or not self.min_improvement >= 0:
            raise ConfigError(f"min_improvement={self.min_improvement!r} is invalid: expected nats >= 0")
        if (
            self.model_name is not None
            and not self.model_name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise ConfigError(f"model_name={self.model_name!r} is invalid: expected letters, digits, '-', '_' or '.'")

    @property
    def registered_name(self) -> str:
        return self.model_name or registry.model_name(self.dataset)

    def storage_url(self) -> str:
        return self.storage or default_study_storage()

    def tune_base(self) -> Config:
        """The base config `vae tune` builds from the same arguments (the study's settings come from it)."""
        return Config(
            DataConfig(dataset=self.dataset, subset=self.subset),
            ModelConfig(),
            TrainConfig(epochs=self.tune_epochs, progress=False),
        )

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or default_tracking_uri()


class StepError(VAEError):
    """A pipeline step's subprocess failed; the message carries its last error line."""


def run_vae(args: list[str], log: Log = print, timeout: float | None = None) -> dict[str, Any]:
    """`python -m vae ARGS --json`: forwards its stderr lines to `log`, returns its JSON result. Stopped after
    `timeout` seconds: SIGTERM (torchrun passes it to its workers), SIGKILL 30 s later. The child stays in the
    night's process group, and gets SIGTERM when this process dies, even by SIGKILL (vae/lifetime.py): no
    orphan racing the next night."""
    cmd = [sys.executable, "-m", "vae", *args, "--json"]
    log("$ " + " ".join(cmd[2:]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}  # dies with this process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    timers = [threading.Timer(timeout, proc.terminate), threading.Timer(timeout + 30, proc.kill)] if timeout else []
    for t in timers:
        t.daemon = True
        t.start()
    try:
        return _collect(proc, args, log, timeout)
    finally:
        for t in timers:
            t.cancel()


def _collect(proc: subprocess.Popen, args: list[str], log: Log, timeout: float | None) -> dict[str, Any]:
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        line = line.rstrip()
        if line:
            log(line)
            tail = (tail + [line])[-20:]
    out = proc.stdout.read() if proc.stdout else ""
    if proc.wait() in (-9, -15) and timeout:
        raise StepError(f"`vae {args[0]}` was killed after its timeout of {timeout:g} s (task_timeout)")
    if proc.returncode != 0:
        last = next((x for x in reversed(tail) if "error" in x.lower()), tail[-1] if tail else "no output")
        raise StepError(f"`vae {args[0]}` exited with {proc.returncode}: {last}")
    lines = [x for x in out.splitlines() if x.startswith("{")]
    if not lines:
        raise StepError(f"`vae {args[0]}` printed no JSON result")
    return json.loads(lines[-1])


def fetch_step(p: PipelineParams) -> dict[str, Any]:
    datasets.fetch(p.dataset)
    return datasets.info(DataConfig(dataset=p.dataset, subset=p.subset))


def plan_step(p: PipelineParams, fingerprint: str) -> dict[str, Any]:
    """This night's study, case and trial target (vae/tune/nightly.py)."""
    return nightly.plan_night(
        p.storage_url(), p.registered_name, fingerprint, p.tune_base(), p.trials, p.study, space=p.space
    )


def night_step(p: PipelineParams, flow_run_id: str) -> str:
    """The night's top-level MLflow run, under which the study, training and evaluation runs hang."""
    tags = {night_runs.FLOW_RUN_TAG: flow_run_id, "dataset": p.dataset, "model": p.registered_name}
    return night_runs.start_night(p.resolved_tracking_uri(), p.registered_name, tags)


def tune_step(
    p: PipelineParams, plan: dict[str, Any], fingerprint: str, night_id: str | None = None, log: Log = print
) -> dict[str, Any]:
    """`vae tune` until the night's study holds plan["target"] trials (a no-op when it already does); its study
    run (and its trials) under the night's run."""
    args = ["tune", "--dataset", p.dataset, "--trials", str(plan["target"]), "--epochs", str(p.tune_epochs)]
    args += [
        "--nproc",
        str(p.nproc),
        "--workers",
        str(p.workers),
        "--study",
        plan["study"],
        "--storage",
        p.storage_url(),
    ]
    args += ["--out", str(Path(p.workdir) / "studies" / plan["study"]), *tracked(p, night_id)]
    if p.subset:
        args += ["--subset", str(p.subset)]
    if p.space:
        args += ["--space", p.space]
    result = run_vae(args, log, timeout=p.task_timeout)
    result["fingerprint"] = fingerprint
    return result


def tracked(p: PipelineParams, night_id: str | None) -> list[str]:
    """The flags that send a `vae tune` or `vae train` to the model's experiment, under the night's run."""
    args = ["--tracking-uri", p.resolved_tracking_uri(), "--experiment", p.registered_name]
    return args + (["--parent-run-id", night_id] if night_id else [])


def train_step(
    p: PipelineParams, best_config: dict[str, Any], fingerprint: str, night_id: str | None = None, log: Log = print
) -> dict[str, Any]:
    """Train the best configuration for the full budget, live in MLflow under the night's run; its best epoch
    is the run's logged model. The run folder is named after the config and the data, so a rerun after a
    crash resumes it (and its MLflow run) instead of starting over."""
    cfg = Config.from_dict(best_config).replace(
        train={"epochs": p.epochs, "progress": False, "patience": p.patience}, data={"subset": p.subset}
    )
    out = Path(p.workdir) / f"train-{candidate_key(cfg, fingerprint)}"
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    config_file.write_text(json.dumps(cfg.to_dict(), indent=2))
    args = ["train", "--config", str(config_file), "--out", str(out), "--nproc", str(p.nproc), *tracked(p, night_id)]
    if (out / "checkpoint.pt").exists():
        log(f"resuming the training in {out} from its checkpoint")
        args.append("--resume")
    return run_vae(args, log, timeout=p.task_timeout)


def candidate_key(cfg: Config, fingerprint: str) -> str:
    """Names a candidate: its training run folder and its registered version's tag `candidate_key`."""
    return hashlib.sha256(json.dumps([cfg.to_dict(), fingerprint], sort_keys=True).encode()).hexdigest()[:12]


def evaluate_step(p: PipelineParams, checkpoint: str) -> dict[str, Any]:
    figures = Path(checkpoint).parent / "figures"
    return evaluate(checkpoint, iw_samples=p.iw_samples, figures_dir=figures)


def register_step(
    p: PipelineParams,
    study: dict[str, Any],
    trained: dict[str, Any],
    metrics: dict[str, Any],
    night: dict[str, Any],
    night_id: str,
) -> dict[str, Any]:
    """The evaluation run under the night, then a new registered version of the training run's logged model
    with the alias `challenger`. Never a second version of one candidate (config + data): a retry, or a night
    that reaches a candidate already registered, gets that version back with duplicate=True."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    key = Path(trained["out"]).name.removeprefix("train-")
    found = candidate.find_candidate(uri, name, key)
    if found is not None:
        return {"duplicate": True, "version": found, "name": name, "tracking_uri": uri, "run_id": None}
    tags = {
        "study": study.get("study", ""),
        "study_trial": str(study.get("best_trial")),
        "study_run_id": study.get("parent_run_id", ""),
        "night_run_id": night_id,
    }
    version_tags = {"candidate_key": key, "nightly.case": night["case"]}
    return candidate.register_candidate(uri, name, trained, metrics, night_id, tags, version_tags)


def registered_step(p: PipelineParams, study: dict[str, Any], version: str) -> None:
    """The study's best trial is registered: later nights on the same study need a better one to train."""
    nightly.mark_registered(p.storage_url(), study["study"], study["best_trial"], study["best_value"], version)


def night_record_step(
    p: PipelineParams, night: dict[str, Any], extra: dict[str, Any], failed: bool = False, run_id: str | None = None
) -> dict:
    """Close the night's run (`run_id`; else the one its Prefect flow run `extra["prefect.flow_run_id"]` opened;
    else a new one, for a night that died before opening it): which case, why, which version is champion."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    flow_run = extra.get(night_runs.FLOW_RUN_TAG)
    run_id = run_id or (night_runs.find_night(uri, name, str(flow_run)) if flow_run else None)
    run_id = run_id or night_runs.start_night(uri, name, {k: str(v) for k, v in extra.items()})
    champ = candidate.champion(uri, name)
    champion = str(champ.version) if champ is not None else None
    tags = {
        "nightly.case": night["case"],
        "nightly.reason": night["reason"][:4000],
        "champion": champion or "none",
        **{k: str(v) for k, v in extra.items() if not isinstance(v, (dict, list))},  # the rest: pipeline.json
    }
    night_runs.end_night(uri, run_id, tags, {"params": asdict(p), "night": night, **extra}, failed)
    return {"run_id": run_id, "champion": champion, "name": name, "tracking_uri": uri}


def quiet_markdown(night: dict[str, Any], record: dict[str, Any]) -> str:
    champion = f"v{record['champion']} stays champion" if record["champion"] else "there is no champion yet"
    return (
        f"# {record['name']}: no new candidate\n\n**Case:** `{night['case']}`: {night['reason']}.\n\n"
        f"Nothing was trained or registered; {champion}.\n\n"
        f"MLflow run `{record['run_id']}` at `{record['tracking_uri']}`.\n"
    )


def gate_step(p: PipelineParams, trained: dict, registered: dict, metrics: dict) -> dict[str, Any]:
    """The gate's decision on the registered candidate against the champion, re-scored on this run's test
    images (vae/tracking/promotion.py); nothing moves yet."""
    return promotion.gate(trained, registered, metrics, p.min_improvement, p.iw_samples, p.require_approval)


def promote_step(
    trained: dict, registered: dict, metrics: dict, gated: dict, approval: dict | None = None
) -> dict[str, Any]:
    """Act on the gate's decision and the reviewer's answer (if asked): tags, champion, comparison, card."""
    return promotion.promote(trained, registered, metrics, gated, approval)


def reevaluate_champion(p: PipelineParams, log: Log = print) -> dict[str, Any]:
    """Score the champion on this data set's current test split; log it on its run and version."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    mv = candidate.require_champion(uri, name)
    model, cfg = candidate.load_champion(uri, name)
    data = load(DataConfig(dataset=p.dataset))
    cfg = dataclasses.replace(cfg, data=DataConfig(dataset=p.dataset))
    metrics = evaluate_model(model, cfg, data, iw_samples=p.iw_samples)
    candidate.log_reevaluation(uri, name, mv, metrics)
    log(f"champion {name} v{mv.version}: test -ELBO {metrics['neg_elbo']:.3f} nats on {metrics['fingerprint'][:12]}")
    return {"name": name, "version": str(mv.version), **metrics}


def summary_markdown(study: dict, metrics: dict, registered: dict, decision: dict, night: dict) -> str:
    rows = [
        ("test -ELBO (nats/image)", metrics.get("neg_elbo")),
        ("reconstruction", metrics.get("recon")),
        ("KL", metrics.get("kl")),
        ("recon at z = mu", metrics.get("recon_at_mean")),
        (f"IW NLL (K={metrics.get('iw_samples', 0)})", metrics.get("iw_nll")),
        ("active units", metrics.get("active_units")),
    ]
    table = "\n".join(
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows if v is not None
    )
    return (
        f"# {registered['name']} v{registered['version']}\n\n"
        f"**Case:** `{night['case']}`: {night['reason']}.\n\n"
        f"Dataset `{metrics['dataset']}`, fingerprint `{metrics['fingerprint'][:12]}`; "
        f"{metrics['images']} test images.\n\n| metric | value |\n|---|---|\n{table}\n\n"
        f"**Promotion:** {'promoted to champion' if decision['promote'] else 'stays challenger'}: "
        f"{decision['reason']}.\n\n"
        f"Study `{study.get('study')}`: best trial {study.get('best_trial')} "
        f"(val -ELBO {study.get('best_value', float('nan')):.3f}).\n\n"
        f"MLflow run `{registered['run_id']}` at `{registered['tracking_uri']}`.\n"
    )
