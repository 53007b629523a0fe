"""The pipeline's steps as plain functions: flows/pipeline.py wraps each in a Prefect task.

Tuning and training run as `vae ... --json` subprocesses (torchrun when nproc > 1), never as forks inside
the orchestrator. Evaluation, logging and registration run in-process. Every step takes and returns
the records of vae/records.py (JSON-able dicts), so Prefect can persist them and reuse them when a rerun
reaches the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vae import data as datasets
from vae.api import evaluate
from vae.child import Log, run_vae
from vae.code import code_commit, code_version
from vae.config import Config, DataConfig
from vae.data import load
from vae.evaluation import evaluate_model, per_image_neg_elbo
from vae.io import atomic_write, utc_stamp
from vae.night.params import PipelineParams
from vae.records import (
    Approval,
    Baseline,
    DataInfo,
    Decision,
    Gated,
    Metrics,
    Night,
    NightPlan,
    NightRecord,
    Registered,
    StudySummary,
    Trained,
    TrialRecord,
    Winner,
)
from vae.redact import redact, redact_all
from vae.stores import champion_lock
from vae.tracking import candidate, drift, identity, night_runs, promotion
from vae.tracking.store import configure, tag_value
from vae.tune import nightly


def fetch_step(p: PipelineParams) -> DataInfo:
    datasets.fetch(p.dataset)
    return datasets.info(DataConfig(dataset=p.dataset, subset=p.subset))


def plan_step(p: PipelineParams, fingerprint: str) -> NightPlan:
    """This night's study, case and trial target (vae/tune/nightly.py); a new study gets the champion's config."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    if not p.switch_data:  # before a champion or a study of other data is read
        identity.check_source(uri, name, p.dataset)

    def champion() -> Config | None:  # read only for a new study
        return candidate.load_champion(uri, name)[1] if candidate.champion(uri, name) is not None else None

    return nightly.plan_night(
        p.storage_url(),
        name,
        fingerprint,
        p.tune_base(),
        p.trials,
        p.study,
        space=p.space,
        champion=champion,
        source=identity.data_source(p.dataset),
        switch=p.switch_data,
    )


def night_step(p: PipelineParams, flow_run_id: str) -> str:
    """The night's top-level MLflow run, under which the study, training and evaluation runs hang."""
    tags = {night_runs.FLOW_RUN_TAG: flow_run_id, "dataset": p.dataset, "model": p.registered_name}
    return night_runs.start_night(p.resolved_tracking_uri(), p.registered_name, tags)


def tune_step(
    p: PipelineParams, plan: NightPlan, fingerprint: str, night_id: str | None = None, log: Log = print
) -> StudySummary:
    """`vae tune` until the night's study holds plan["target"] trials (a no-op when it already does); its study
    run (and its trials) under the night's run."""
    args = ["tune", "--dataset", p.dataset, "--trials", str(plan["target"]), "--epochs", str(p.epochs)]
    args += ["--min-epochs", str(min(p.min_epochs, p.epochs)), "--sampler", p.sampler, "--pruner", p.pruner]
    optional = {"--patience": p.patience, "--sampler-seed": p.sampler_seed, "--startup-trials": p.startup_trials}
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    args += [
        "--nproc",
        str(p.nproc),
        "--workers",
        str(p.workers),
        "--study",
        plan["study"],
    ]
    args += ["--out", str(Path(p.workdir) / "studies" / plan["study"]), *tracked(p, night_id)]
    if p.subset:
        args += ["--subset", str(p.subset)]
    if p.space:
        args += ["--space", p.space]
    result = run_vae(args, log, timeout=p.task_timeout, env={**stores(p), "VAE_OPTUNA_STORAGE": p.storage_url()})
    result["fingerprint"] = fingerprint
    if "storage" in result:  # shown in the night's records: the child had it from the environment
        result["storage"] = redact(str(result["storage"]))
    return result


def tracked(p: PipelineParams, night_id: str | None) -> list[str]:
    """The flags that send a `vae tune` or `vae train` to the model's experiment, under the night's run (the
    tracking URI goes in the environment, stores())."""
    return ["--experiment", p.registered_name] + (["--parent-run-id", night_id] if night_id else [])


def stores(p: PipelineParams) -> dict[str, str]:
    """The child's MLflow store, as the environment it reads: a URL may hold a password, which a command line
    would show to every local user (/proc/PID/cmdline) and to the night's logs."""
    return {"MLFLOW_TRACKING_URI": p.resolved_tracking_uri()}


def train_step(
    p: PipelineParams, best_config: dict[str, Any], fingerprint: str, night_id: str | None = None, log: Log = print
) -> Trained:
    """Train the best configuration for the full budget, live in MLflow under the night's run; its best epoch
    is the run's logged model. The run folder is named after the candidate key (config and data), so a rerun
    after a crash resumes it (and its MLflow run) instead of starting over."""
    cfg = Config.from_dict(best_config).replace(
        train={"epochs": p.epochs, "progress": False, "patience": p.patience}, data={"subset": p.subset}
    )
    key = candidate_key(cfg, fingerprint)
    out = Path(p.workdir) / f"train-{key}"
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    config_file.write_text(json.dumps(cfg.to_dict(), indent=2))
    args = ["train", "--config", str(config_file), "--out", str(out), "--nproc", str(p.nproc), *tracked(p, night_id)]
    if (out / "checkpoint.pt").exists():
        log(f"resuming the training in {out} from its checkpoint")
        args.append("--resume")
    return {**run_vae(args, log, timeout=p.task_timeout, env=stores(p)), "candidate_key": key}


def candidate_key(cfg: Config, fingerprint: str, code: str | None = None) -> str:
    """Names a candidate: its training run folder and its registered version's tag `candidate_key`. Config,
    data and code (vae/code.py): the same config trained by changed code is another candidate."""
    code = code or code_version()
    return hashlib.sha256(json.dumps([cfg.to_dict(), fingerprint, code], sort_keys=True).encode()).hexdigest()[:12]


def winner(study: StudySummary) -> Winner:
    """What the candidate step reads of a study's summary: the same for every night that finds the same winner
    (the summary's counts and timings are not), so the cached candidate is reused by a night that resumes."""
    return {k: study.get(k) for k in Winner.__annotations__}


def candidate_step(
    p: PipelineParams, study: Winner, fingerprint: str, night_id: str | None = None, log: Log = print
) -> Trained:
    """The night's candidate: the study's best trial as it was trained (its best epoch, best.pt, logged as the
    model of its live run under the study run), with its history and validation figures added to that run. Only
    where the trial left no checkpoint here or no logged model (a worker on another machine ran it, or it ran
    untracked) is its configuration trained again, at the same budget and so to the same weights; and where
    other code trained it (vae/code.py), by this code."""
    key = candidate_key(Config.from_dict(study["best_config"]), fingerprint)
    checkpoint = study.get("best_checkpoint")
    if study.get("best_code_version") != code_version():
        log(f"trial {study['best_trial']} was trained by other code: training its configuration with this code")
        return train_step(p, study["best_config"], fingerprint, night_id, log)
    if not (checkpoint and Path(checkpoint).is_file() and study.get("best_model_id")):
        log(f"trial {study['best_trial']} left no checkpoint or logged model here: training its configuration")
        return train_step(p, study["best_config"], fingerprint, night_id, log)
    uri = configure(p.resolved_tracking_uri())
    summary = candidate.complete_trial_run(uri, study["best_run_id"], Path(checkpoint))
    return {
        **summary,
        "mlflow_run_id": study["best_run_id"],
        "model_uri": study["best_model_uri"],
        "model_id": study["best_model_id"],
        "tracking_uri": uri,
        "candidate_key": key,
        "trial": study["best_trial"],
    }


def baseline_step(
    p: PipelineParams, recipe: TrialRecord | None, fingerprint: str, night_id: str | None = None, log: Log = print
) -> Baseline:
    """The seed recipe at the night's budget on this data, scored on the test split: the study's recipe trial
    (trial 0 of every new study; vae/tune/seeds.py), evaluated once per candidate key (config + data) and kept in
    the work folder, so that every later night on the same data reuses it. Training is deterministic, so a study
    with other settings but the same budget trains the same recipe weights and finds the same key. Where the
    trial's checkpoint is not here (an older study, another machine), the recipe is trained here."""
    recipe = recipe or {}
    config = recipe.get("config") or p.tune_base().to_dict()
    key = candidate_key(Config.from_dict(config), fingerprint)
    kept = Path(p.workdir) / "baselines" / f"{key}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    checkpoint = recipe.get("checkpoint")
    if not (checkpoint and Path(checkpoint).is_file()):
        log("the study's recipe trial left no checkpoint here: training the seed recipe")
        checkpoint = train_step(p, config, fingerprint, night_id, log)["best_checkpoint"]
    metrics = evaluate(checkpoint)  # -ELBO and the sample metrics; no IW bound, no figures
    result = {"candidate_key": key, "trial": recipe.get("trial"), "checkpoint": str(checkpoint), "metrics": metrics}
    kept.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(kept, lambda f: f.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n"))
    return result


def with_baseline(metrics: Metrics, baseline: Baseline) -> Metrics:
    """The candidate's test metrics with the recipe's -ELBO on the same test images and the gain over it."""
    recipe = baseline["metrics"]["neg_elbo"]
    return {**metrics, "recipe_neg_elbo": recipe, "gain_over_recipe": recipe - metrics["neg_elbo"]}


def evaluate_step(p: PipelineParams, checkpoint: str) -> Metrics:
    figures = Path(checkpoint).parent / "figures"
    return evaluate(checkpoint, iw_samples=p.iw_samples, figures_dir=figures)


def register_step(
    p: PipelineParams,
    study: StudySummary,
    trained: Trained,
    metrics: Metrics,
    night: Night,
    night_id: str,
) -> Registered:
    """The evaluation run under the night, then a new registered version of the training run's logged model
    with the alias `challenger`. Never a second version of one candidate (config + data): a retry, or a night
    that reaches a candidate already registered, gets that version back with duplicate=True, unless no decision
    was finished on it (resumed=True): then the night gates and promotes it as if it had just registered it.
    An earlier night's version left undecided for another candidate (other code or data) is marked superseded."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    with champion_lock(name, uri, what="registration"):  # two nights on other workdirs: one version, not two
        return _register(uri, name, study, trained, metrics, night, night_id)


def _register(
    uri: str, name: str, study: StudySummary, trained: Trained, metrics: Metrics, night: Night, night_id: str
) -> Registered:
    key = trained["candidate_key"]
    found = candidate.find_candidate(uri, name, key)
    if found is not None and (waits := candidate.awaiting(uri, name, found)):
        return {**_duplicate(uri, name, found), "awaits": waits}  # that night decides it, not this one
    if found is not None and (left := candidate.undecided(uri, name, found)) is not None:
        return {"duplicate": False, "resumed": True, **left}  # registered, never decided: judged tonight
    if found is not None:
        return _duplicate(uri, name, found)
    tags = {
        "study": study.get("study", ""),
        "study_trial": str(study.get("best_trial")),
        "study_run_id": study.get("parent_run_id", ""),
        "night_run_id": night_id,
    }
    version_tags = {"candidate_key": key, "nightly.case": night["case"], **code_tags()}
    registered = candidate.register_candidate(uri, name, trained, metrics, night_id, tags, version_tags)
    candidate.supersede(uri, name, registered["version"])  # an earlier night's undecided version of other code
    return {"duplicate": False, **registered}


def _duplicate(uri: str, name: str, version: str) -> Registered:
    return {"duplicate": True, "version": version, "name": name, "tracking_uri": uri, "run_id": None}


def code_tags() -> dict[str, str]:
    """The code a version was made by: `code_version` (the key, vae/code.py) and `code_commit` (for people)."""
    return {"code_version": code_version(), "code_commit": code_commit()}


def registered_step(p: PipelineParams, study: StudySummary, version: str) -> None:
    """The study's best trial is registered: later nights on the same study need a better one, or other code,
    to train."""
    nightly.mark_registered(
        p.storage_url(), study["study"], study["best_trial"], study["best_value"], version, code_version()
    )


def night_record_step(
    p: PipelineParams, night: Night | NightPlan, extra: dict[str, Any], failed: bool = False, run_id: str | None = None
) -> NightRecord:
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
        "nightly.reason": tag_value(night["reason"]),
        "champion": champion or "none",
        **{k: str(v) for k, v in extra.items() if not isinstance(v, (dict, list))},  # the rest: pipeline.json
    }
    record = {"params": asdict(p), "night": night, **extra}
    night_runs.end_night(uri, run_id, redact_all(tags), redact_all(record), failed)
    return {"run_id": run_id, "champion": champion, "name": name, "tracking_uri": uri}


def gate_step(p: PipelineParams, trained: Trained, registered: Registered, metrics: Metrics, recipe: Baseline) -> Gated:
    """The gate's decision on the registered candidate against the champion, re-scored on this run's test
    images (vae/tracking/promotion.py), the seed recipe beside them; nothing moves yet."""
    return promotion.gate(
        trained, registered, metrics, p.min_improvement, p.iw_samples, p.require_approval, recipe, p.max_fid_increase
    )


def promote_step(
    trained: Trained, registered: Registered, metrics: Metrics, gated: Gated, approval: Approval | None = None
) -> Decision:
    """Act on the gate's decision and the reviewer's answer (if asked): tags, champion, comparison, card."""
    return promotion.promote(trained, registered, metrics, gated, approval)


def reevaluate_champion(p: PipelineParams, log: Log = print) -> dict[str, Any]:
    """Score the champion on this data set's current test split, compare it with its record (vae/tracking/
    drift.py); log both on its run (linked to its model and today's data) and its version."""
    uri, name = configure(p.resolved_tracking_uri()), p.registered_name
    mv = candidate.require_champion(uri, name)
    model, cfg = candidate.load_champion(uri, name)
    data = load(DataConfig(dataset=p.dataset))
    cfg = dataclasses.replace(cfg, data=DataConfig(dataset=p.dataset))
    metrics = evaluate_model(model, cfg, data, iw_samples=p.iw_samples)
    found = drift.drift(per_image_neg_elbo(model, data.test.images, cfg), drift.recorded_value(mv), p.min_improvement)
    drift.log_reevaluation(uri, name, mv, metrics, found)
    log(
        f"champion {name} v{mv.version}: test -ELBO {metrics['neg_elbo']:.3f} nats on {metrics['fingerprint'][:12]}"
        f" (registered with {found['recorded']:.3f}: {found['change']:+.3f} nats"
        + (", DRIFTED beyond the gate's interval)" if found["drifted"] else ", within the gate's interval)")
    )
    return {"name": name, "version": str(mv.version), **metrics, "drift": found}


def approval(decision: str, reviewer: str, comment: str) -> Approval:
    """A reviewer's answer to the sign-off form, stamped now."""
    return {"decision": decision, "reviewer": reviewer, "comment": comment, "time": utc_stamp()}
