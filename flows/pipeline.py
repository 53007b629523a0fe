"""The `vae-pipeline` flow: fetch, plan the night, tune, train the best, evaluate, register, promote.

A night is a case, not a replay (vae/tune/nightly.py): new data gets its own study, warm-started from the
previous data version; the same data and settings get `trials` more trials of the same study, and a new
version only when the search found a better configuration; changed settings get their own study. Tasks are
thin wrappers of vae.night's steps. Tuning is not cached (the Optuna study is its memory, and the night's
target grows); training and evaluation are cached on their inputs (config and data fingerprint), and a
registered candidate is never registered again. Fetching, registering and promoting retry with backoff
on errors that may be transient; tuning and training are killed after `task_timeout` seconds.

    python -m flows.pipeline --trials 4 --epochs 10          # run once, on a temporary local Prefect server
    python -m flows.deploy                                    # nightly schedule on a running `prefect server`

With require_approval, the run pauses after the gate and before `champion` moves, until someone answers the
form of the paused run (approve or reject, with a comment) in the Prefect UI or through its API; the answer
is recorded on the registered version. Pausing needs a Prefect server that outlives the run (PREFECT_API_URL):
without one the flow refuses to start.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_API_URL
from prefect.tasks import exponential_backoff

from flows.nights import night_lock, record_failure
from vae import summaries
from vae.errors import ConfigError, VAEError
from vae.night import steps
from vae.night.params import PipelineParams

# The night's run id is no part of a cache key: a later night reuses the training and takes its run under itself.
CACHED = dict(
    cache_policy=(INPUTS - "night_id") + TASK_SOURCE, persist_result=True, cache_expiration=timedelta(days=30)
)


def _transient(task, task_run, state) -> bool:
    """Retry a registry step unless it failed on bad input (ConfigError and the like: retrying cannot help)."""
    try:
        state.result()
    except VAEError:
        return False
    except Exception:
        return True
    return False


RETRIED = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_transient)


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
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - t0, 3)  # adds up


def _log(line: str) -> None:
    get_run_logger().info(line)


def _fail_after(step: str) -> None:
    """Fault injection for recovery drills and tests: VAE_PIPELINE_FAIL_AFTER=<step> fails right after it."""
    if os.environ.get("VAE_PIPELINE_FAIL_AFTER") == step:
        raise RuntimeError(f"injected failure after {step} (VAE_PIPELINE_FAIL_AFTER)")


@task(retries=3, retry_delay_seconds=[2, 8, 30])
def fetch_data(p: PipelineParams) -> dict:
    info = steps.fetch_step(p)
    if info.get("skipped"):
        _log(
            f"skipped {len(info['skipped'])} bad entries of the data: "
            + "; ".join(f"{s['file']} ({s['why']})" for s in info["skipped"])
        )
    return info


@task(**RETRIED)
def open_night(p: PipelineParams) -> str:
    return steps.night_step(p, str(current_run.id))


@task(**RETRIED)
def close_night(p: PipelineParams, night_id: str, night: dict, extra: dict) -> dict:
    return steps.night_record_step(p, night, extra, run_id=night_id)


@task
def plan(p: PipelineParams, fingerprint: str) -> dict:
    return steps.plan_step(p, fingerprint)


@task
def tune(p: PipelineParams, night: dict, fingerprint: str, night_id: str) -> dict:
    return steps.tune_step(p, night, fingerprint, night_id, log=_log)


@task(**CACHED)
def candidate(p: PipelineParams, study: dict, fingerprint: str, night_id: str) -> dict:
    return steps.candidate_step(p, study, fingerprint, night_id, log=_log)


@task(**CACHED)
def baseline(p: PipelineParams, study: dict, fingerprint: str, night_id: str) -> dict:
    return steps.baseline_step(p, study, fingerprint, night_id, log=_log)


@task(**CACHED)
def evaluate(p: PipelineParams, checkpoint: str, fingerprint: str) -> dict:
    return steps.evaluate_step(p, checkpoint)


@task(**RETRIED)
def register(p: PipelineParams, study: dict, trained: dict, metrics: dict, night: dict, night_id: str) -> dict:
    return steps.register_step(p, study, trained, metrics, night, night_id)


@task(**RETRIED)
def gate(p: PipelineParams, trained: dict, registered: dict, metrics: dict, recipe: dict) -> dict:
    return steps.gate_step(p, trained, registered, metrics, recipe)


@task(**RETRIED)
def promote(
    p: PipelineParams, study: dict, trained: dict, registered: dict, metrics: dict, gated: dict, approval: dict | None
) -> dict:
    decision = steps.promote_step(trained, registered, metrics, gated, approval)
    steps.registered_step(p, study, registered["version"])
    return decision


class SignOff(RunInput):
    """The form of a paused run: the reviewer's answer on moving `champion` to the new version."""

    decision: Literal["approve", "reject"]
    reviewer: str
    comment: str = ""


def need_server(p: PipelineParams) -> None:
    """A sign-off needs a server someone else can reach to answer; the temporary one dies with the run."""
    if p.require_approval and not PREFECT_API_URL.value():
        raise ConfigError(
            "require_approval needs a Prefect server that outlives this run, to answer the paused run's form: "
            "start one (`prefect server start`) and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        )


class SignOffTimeout(VAEError):
    """Nobody answered the paused run within approval_timeout: a run that started and failed."""

    exit_code = 1


def _sign_off(p: PipelineParams, registered: dict, gated: dict) -> dict:
    """Pause until a reviewer answers; FlowPauseTimeout after approval_timeout (the champion stays)."""
    d = gated["decision"]
    _log(
        f"{registered['name']} v{registered['version']} passes the gate ({d['reason']}). Waiting for a sign-off: "
        f"read comparison/comparison.md on MLflow run {registered['run_id']}, then answer this paused run's form "
        f"in the Prefect UI (approve or reject, with a comment)"
    )
    name, version = registered["name"], registered["version"]
    try:
        answer = pause_flow_run(
            wait_for_input=SignOff, timeout=p.approval_timeout, poll_interval=2, key=f"sign-off-v{version}"
        )
    except FlowPauseTimeout:
        raise SignOffTimeout(
            f"no sign-off for {name} v{version} within approval_timeout={p.approval_timeout} s: the champion "
            f"stays, v{version} stays challenger with no decision; if it should win, promote it by hand: "
            f"vae registry promote --name {name} --version {version}"
        ) from None
    _log(f"sign-off: {answer.decision} by {answer.reviewer}: {answer.comment or '(no comment)'}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"decision": answer.decision, "reviewer": answer.reviewer, "comment": answer.comment, "time": stamp}


def _quiet(p: PipelineParams, best: dict, night: dict, data: dict, clock: _Clock, night_id: str) -> dict:
    """A night that registers nothing: its MLflow record and its Prefect artifact."""
    record = close_night(p, night_id, night, {"study": best.get("study"), "fingerprint": data["fingerprint"]})
    create_markdown_artifact(
        summaries.quiet_markdown(night, record),
        key="vae-pipeline-summary",
        description="no new candidate: the case and the champion",
    )
    return {
        "params": asdict(p),
        "night_run_id": night_id,
        "study": best,
        "night": night,
        "registered": None,
        "record": record,
        "decision": None,
        "metrics": None,
        "seconds": clock.seconds,
    }


def _night(p: PipelineParams, clock: _Clock) -> dict:
    night_id = open_night(p)  # the night's MLflow run: everything below hangs under it
    with clock("fetch"):
        data = fetch_data(p)
    with clock("tune"):
        night = plan(p, data["fingerprint"])
        _log(f"night: {night['case']} on study {night['study']}: {night['reason']}")
        best = tune.with_options(timeout_seconds=p.task_timeout + 120)(p, night, data["fingerprint"], night_id)
        night = {**night, **steps.nightly.after_search(night, best), "skipped_files": len(data.get("skipped", []))}
    _fail_after("tune")
    _log(f"after the search: {night['case']}: {night['reason']}")
    if not night["train"]:
        return _quiet(p, best, night, data, clock, night_id)
    steps.nightly.mark_pending(p.storage_url(), best["study"], best["best_trial"])
    with clock("candidate"):  # the winning trial is the candidate: nothing is trained again unless it is not here
        choose = candidate.with_options(timeout_seconds=p.task_timeout + 120)
        trained = choose(p, steps.winner(best), data["fingerprint"], night_id)
        # The cache (under PREFECT_HOME) outlives runs/: a hit made by another checkout, or before runs/ was
        # deleted, names files that are not here. Take it again, and evaluate again what was taken again.
        stale = not (Path(trained["out"]) / "history.json").is_file() or not Path(trained["checkpoint"]).is_file()
        if stale:
            trained = choose.with_options(refresh_cache=True)(p, steps.winner(best), data["fingerprint"], night_id)
    _fail_after("candidate")
    with clock("evaluate"):
        model_checkpoint = trained.get("best_checkpoint") or trained["checkpoint"]  # the best epoch, not the last
        recipe = baseline(p, {"recipe": best.get("recipe")}, data["fingerprint"], night_id)
        metrics = evaluate.with_options(refresh_cache=stale)(p, model_checkpoint, data["fingerprint"])
        metrics = steps.with_baseline(metrics, recipe)
    _fail_after("evaluate")
    with clock("register"):
        registered = register(p, best, trained, metrics, night, night_id)
    if registered.get("duplicate"):  # this night's case stands; it just has nothing new to offer
        steps.registered_step(p, best, registered["version"])
        night = {
            **night,
            "reason": night["reason"] + f"; the candidate is already registered as v{registered['version']}",
        }
        return _quiet(p, best, night, data, clock, night_id)
    with clock("promote"):
        gated = gate(p, trained, registered, metrics, recipe)
    approval = _sign_off(p, registered, gated) if p.require_approval and gated["decision"]["promote"] else None
    with clock("promote"):
        decision = promote(p, best, trained, registered, metrics, gated, approval)
    outcome = {"registered_version": registered["version"], "promoted": decision["promote"], "study": best}
    close_night(p, night_id, night, {**outcome, "metrics": metrics, "registered": registered, "decision": decision})
    create_markdown_artifact(
        summaries.summary_markdown(best, metrics, registered, decision, night),
        key="vae-pipeline-summary",
        description="the case, metrics, promotion decision, MLflow run",
    )
    return {
        "params": asdict(p),
        "night_run_id": night_id,
        "study": best,
        "night": night,
        "metrics": metrics,
        "registered": registered,
        "decision": decision,
        "seconds": clock.seconds,
    }


def _pipeline(**params: Any) -> dict:
    p = PipelineParams(**params)  # bad parameters fail here
    need_server(p)
    clock = _Clock()
    with night_lock(p, _log):
        return _night(p, clock)


def _signature() -> inspect.Signature:
    """The flow's parameters: PipelineParams' fields, names, types and defaults, declared there once (the
    deployments, `python -m flows.pipeline --help` and the Prefect UI's form all read them from here)."""
    hints = typing.get_type_hints(PipelineParams)
    return inspect.Signature(
        [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            for f in fields(PipelineParams)
        ],
        return_annotation=dict,
    )


_pipeline.__signature__ = _signature()
_pipeline.__doc__ = PipelineParams.__doc__
vae_pipeline = flow(name="vae-pipeline", log_prints=True, on_failure=[record_failure], on_crashed=[record_failure])(
    _pipeline
)


@flow(name="vae-reevaluate-champion", log_prints=True)
def reevaluate_champion(
    dataset: str = "mnist-5k", tracking_uri: str | None = None, model_name: str | None = None, iw_samples: int = 100
) -> dict:
    """Score the current champion on today's test split and log the numbers to its MLflow run."""
    p = PipelineParams(dataset=dataset, tracking_uri=tracking_uri, model_name=model_name, iw_samples=iw_samples)
    fetch_data(p)
    return steps.reevaluate_champion(p, log=_log)


def _scalar(hint) -> type:
    """int for `int` and `int | None`, and so on: what a command-line value of the field is parsed as."""
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    return kinds[0]


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description="Run the vae-pipeline flow once.")
    d, hints = PipelineParams(), typing.get_type_hints(PipelineParams)
    for name, value in asdict(d).items():
        if isinstance(value, bool):
            a.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=value)
            continue
        kind = _scalar(hints[name])
        a.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = a.parse_args(argv)
    try:
        need_server(PipelineParams(**vars(args)))
    except Exception as e:  # one line, exit 2, before Prefect starts anything
        print(f"vae-pipeline: error: {e}", file=sys.stderr)
        return 2
    try:
        result = vae_pipeline(**vars(args))
    except VAEError as e:  # Prefect has logged the failed run above; the reason once more, as the last line
        print(f"vae-pipeline: error: {e}", file=sys.stderr)
        return e.exit_code
    reg, dec, night = result["registered"], result["decision"], result["night"]
    out = {
        "case": night["case"],
        "night_run_id": result["night_run_id"],
        "reason": night["reason"],
        "stage_seconds": result["seconds"],
        "tune": {k: result["study"].get(k) for k in ("study", "trials", "finish_seconds", "counts", "best_params")},
    }
    if reg is None:
        print(
            json.dumps(
                {
                    **out,
                    "registered": None,
                    "champion": result["record"]["champion"],
                    "run_id": result["record"]["run_id"],
                }
            )
        )
        return 0
    print(
        json.dumps(
            {
                **out,
                "run_id": reg["run_id"],
                "model": reg["name"],
                "version": reg["version"],
                "promoted": dec["promote"],
                "test_neg_elbo": result["metrics"]["neg_elbo"],
                "recipe_neg_elbo": result["metrics"].get("recipe_neg_elbo"),
                "gain_over_recipe": result["metrics"].get("gain_over_recipe"),
                "sample_fid": result["metrics"].get("sample_fid"),
            }
        )
    )
    print(
        f"\nMLflow: run `mlflow ui --backend-store-uri {reg['tracking_uri']}` and open http://127.0.0.1:5000 "
        f"(experiment {reg['name']}: night run {result['night_run_id']}, its training run {reg['run_id']} holds "
        f"the model); registered model {reg['name']} v{reg['version']} "
        f"({'champion' if dec['promote'] else 'challenger'}).",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
