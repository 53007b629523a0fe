"""The `vae-pipeline` flow: fetch, tune, train the best, evaluate, register, promote.

Tasks are thin wrappers of vae.pipeline's steps. Only fetching retries (I/O). Tuning, training and
evaluation are cached on their inputs, which include the dataset fingerprint, so a rerun after a failure
reuses what finished (and the Optuna study and the training checkpoint continue where they stopped).

    python -m flows.pipeline --trials 4 --epochs 10          # run once, on a temporary local Prefect server
    python -m flows.deploy                                    # nightly schedule on a running `prefect server`
"""
from __future__ import annotations

import os

# Nothing phones home. Set before prefect (and mlflow) are imported: prefect reads its settings at import.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from vae import pipeline as steps
from vae.pipeline import PipelineParams

CACHED = dict(cache_policy=INPUTS + TASK_SOURCE, persist_result=True, cache_expiration=timedelta(days=30))


class _Clock:
    """Wall seconds of each stage, task overhead included, for the stage-time benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - t0, 3)


def _log(line: str) -> None:
    get_run_logger().info(line)


def _fail_after(step: str) -> None:
    """Fault injection for recovery drills and tests: VAE_PIPELINE_FAIL_AFTER=<step> fails right after it."""
    if os.environ.get("VAE_PIPELINE_FAIL_AFTER") == step:
        raise RuntimeError(f"injected failure after {step} (VAE_PIPELINE_FAIL_AFTER)")


@task(retries=3, retry_delay_seconds=[2, 8, 30])
def fetch_data(p: PipelineParams) -> dict:
    return steps.fetch_step(p)


@task(**CACHED)
def tune(p: PipelineParams, fingerprint: str) -> dict:
    return steps.tune_step(p, fingerprint, log=_log)


@task(**CACHED)
def train_best(p: PipelineParams, best_config: dict, fingerprint: str) -> dict:
    return steps.train_step(p, best_config, fingerprint, log=_log)


@task(**CACHED)
def evaluate(p: PipelineParams, checkpoint: str, fingerprint: str) -> dict:
    return steps.evaluate_step(p, checkpoint)


@task
def register(p: PipelineParams, study: dict, trained: dict, metrics: dict) -> dict:
    return steps.register_step(p, study, trained, metrics)


@task
def promote(p: PipelineParams, registered: dict, metrics: dict) -> dict:
    return steps.promote_step(p, registered, metrics)


@flow(name="vae-pipeline", log_prints=True)
def vae_pipeline(dataset: str = "mnist-5k", trials: int = 4, tune_epochs: int = 3, epochs: int = 10,
                 nproc: int = 1, subset: int | None = None, study: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, model_name: str | None = None, min_improvement: float = 0.5,
                 iw_samples: int = 100, workdir: str = "runs/pipeline") -> dict:
    p = PipelineParams(dataset, trials, tune_epochs, epochs, nproc, subset, study, storage, tracking_uri,
                       model_name, min_improvement, iw_samples, workdir)  # bad parameters fail here, before any work
    clock = _Clock()
    with clock("fetch"):
        data = fetch_data(p)
    with clock("tune"):
        best = tune(p, data["fingerprint"])
    _fail_after("tune")
    with clock("train"):
        trained = train_best(p, best["best_config"], data["fingerprint"])
        # The cache (under PREFECT_HOME) outlives runs/: a hit made by another checkout, or before runs/ was
        # deleted, names files that are not here. Train again, and evaluate again what was trained again.
        stale = not (Path(trained["out"]) / "history.json").is_file() or not Path(trained["checkpoint"]).is_file()
        if stale:
            trained = train_best.with_options(refresh_cache=True)(p, best["best_config"], data["fingerprint"])
    _fail_after("train")
    with clock("evaluate"):
        metrics = evaluate.with_options(refresh_cache=stale)(p, trained["checkpoint"], data["fingerprint"])
    _fail_after("evaluate")
    with clock("register"):
        registered = register(p, best, trained, metrics)
    with clock("promote"):
        decision = promote(p, registered, metrics)
    create_markdown_artifact(steps.summary_markdown(p, best, metrics, registered, decision),
                             key="vae-pipeline-summary", description="metrics, promotion decision, MLflow run")
    return {"params": asdict(p), "study": best, "metrics": metrics, "registered": registered, "decision": decision,
            "seconds": clock.seconds}


@flow(name="vae-reevaluate-champion", log_prints=True)
def reevaluate_champion(dataset: str = "mnist-5k", tracking_uri: str | None = None, model_name: str | None = None,
                        iw_samples: int = 100) -> dict:
    """Score the current champion on today's test split and log the numbers to its MLflow run."""
    p = PipelineParams(dataset=dataset, tracking_uri=tracking_uri, model_name=model_name, iw_samples=iw_samples)
    fetch_data(p)
    return steps.reevaluate_champion(p, log=_log)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description="Run the vae-pipeline flow once.")
    d = PipelineParams()
    for name, value in asdict(d).items():
        kind = type(value) if value is not None else (int if name == "subset" else str)
        a.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = a.parse_args(argv)
    try:
        PipelineParams(**vars(args))
    except Exception as e:  # one line, exit 2, before Prefect starts anything
        print(f"vae-pipeline: error: {e}", file=sys.stderr)
        return 2
    result = vae_pipeline(**vars(args))
    reg, dec = result["registered"], result["decision"]
    print(json.dumps({"run_id": reg["run_id"], "model": reg["name"], "version": reg["version"],
                      "promoted": dec["promote"], "test_neg_elbo": result["metrics"]["neg_elbo"],
                      "stage_seconds": result["seconds"], "tune": {k: result["study"].get(k) for k in
                      ("finish_seconds", "counts", "best_params")}}))
    print(f"\nMLflow: run `mlflow ui --backend-store-uri {reg['tracking_uri']}` and open http://127.0.0.1:5000 "
          f"(experiment {reg['name']}, run {reg['run_id']}); registered model {reg['name']} v{reg['version']} "
          f"({'champion' if dec['promote'] else 'challenger'}).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
