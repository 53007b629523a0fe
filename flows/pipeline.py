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

With require_approval, the run waits after the gate, before `champion` moves, for a reviewer's answer
(flows/signoff.py: a deployed night is suspended and frees the night; one run from a shell pauses). It needs
a Prefect server that outlives the run (PREFECT_API_URL): without one the flow refuses to start.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as current_run

from flows import artifacts, signoff
from flows.nights import drill, night_lock, record_failure
from flows.policies import CACHED, RESUMED, RETRIED
from flows.signoff import need_server, sign_off
from vae import summaries
from vae.code import code_version
from vae.errors import VAEError
from vae.night import steps
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
    NightResult,
    Registered,
    StudySummary,
    Trained,
    TrialRecord,
    Winner,
)


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


@task(retries=3, retry_delay_seconds=[2, 8, 30])
def fetch_data(p: PipelineParams) -> DataInfo:
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
def close_night(p: PipelineParams, night_id: str, night: Night, extra: dict) -> NightRecord:
    return steps.night_record_step(p, night, extra, run_id=night_id)


@task
def plan(p: PipelineParams, fingerprint: str) -> NightPlan:
    return steps.plan_step(p, fingerprint)


@task(**RESUMED)
def tune(p: PipelineParams, night: NightPlan, fingerprint: str, night_id: str) -> StudySummary:
    return steps.tune_step(p, night, fingerprint, night_id, log=_log)


@task(**CACHED, **RESUMED)
def candidate(p: PipelineParams, study: Winner, fingerprint: str, night_id: str) -> Trained:
    return steps.candidate_step(p, study, fingerprint, night_id, log=_log)


@task(**CACHED, **RESUMED)
def baseline(p: PipelineParams, recipe: TrialRecord | None, fingerprint: str, night_id: str) -> Baseline:
    return steps.baseline_step(p, recipe, fingerprint, night_id, log=_log)


@task(**CACHED)
def evaluate(p: PipelineParams, checkpoint: str, fingerprint: str) -> Metrics:
    return steps.evaluate_step(p, checkpoint)


@task(**RETRIED)
def register(
    p: PipelineParams, study: StudySummary, trained: Trained, metrics: Metrics, night: Night, night_id: str
) -> Registered:
    return steps.register_step(p, study, trained, metrics, night, night_id)


@task(**RETRIED)
def gate(p: PipelineParams, trained: Trained, registered: Registered, metrics: Metrics, recipe: Baseline) -> Gated:
    return steps.gate_step(p, trained, registered, metrics, recipe)


@task(**RETRIED)
def promote(
    p: PipelineParams,
    study: StudySummary,
    trained: Trained,
    registered: Registered,
    metrics: Metrics,
    gated: Gated,
    approval: Approval | None,
) -> Decision:
    decision = steps.promote_step(trained, registered, metrics, gated, approval)
    steps.registered_step(p, study, registered["version"])
    return decision


def _result(
    p: PipelineParams,
    night_id: str,
    best: StudySummary,
    night: Night,
    record: NightRecord,
    clock: _Clock,
    registered: Registered | None = None,
    metrics: Metrics | None = None,
    decision: Decision | None = None,
) -> NightResult:
    """The flow's result, quiet night or not: every key, None where a stage did not run."""
    return {
        "params": asdict(p),
        "night_run_id": night_id,
        "study": best,
        "night": night,
        "metrics": metrics,
        "registered": registered,
        "decision": decision,
        "record": record,
        "seconds": clock.seconds,
    }


def _quiet(
    p: PipelineParams, best: StudySummary, night: Night, data: DataInfo, clock: _Clock, night_id: str
) -> NightResult:
    """A night that registers nothing: its MLflow record and its Prefect artifact."""
    record = close_night(p, night_id, night, {"study": best.get("study"), "fingerprint": data["fingerprint"]})
    desc = "no new candidate: the case and the champion"
    artifacts.publish(p.registered_name, night, record, summaries.quiet_markdown(night, record), desc)
    return _result(p, night_id, best, night, record, clock)


def _night(p: PipelineParams, clock: _Clock) -> NightResult:
    night_id = open_night(p)  # the night's MLflow run: everything below hangs under it
    with clock("fetch"):
        data = fetch_data(p)
    drill("fetch")
    with clock("tune"):
        night = plan(p, data["fingerprint"])
        _log(f"night: {night['case']} on study {night['study']}: {night['reason']}")
        best = tune.with_options(timeout_seconds=p.task_timeout + 120)(p, night, data["fingerprint"], night_id)
        night = {
            **night,
            **steps.nightly.after_search(night, best, code_version()),
            "skipped_files": len(data.get("skipped", [])),
        }
    drill("tune")
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
    drill("candidate")
    with clock("evaluate"):
        model_checkpoint = trained.get("best_checkpoint") or trained["checkpoint"]  # the best epoch, not the last
        recipe = baseline(p, best.get("recipe"), data["fingerprint"], night_id)
        metrics = evaluate.with_options(refresh_cache=stale)(p, model_checkpoint, data["fingerprint"])
        metrics = steps.with_baseline(metrics, recipe)
    drill("evaluate")
    with clock("register"):
        registered = register(p, best, trained, metrics, night, night_id)
    drill("register")
    if registered.get("duplicate"):  # this night's case stands; it just has nothing new to offer
        steps.registered_step(p, best, registered["version"])
        night = {
            **night,
            "reason": night["reason"] + f"; the candidate is already registered as v{registered['version']}",
        }
        return _quiet(p, best, night, data, clock, night_id)
    with clock("promote"):
        gated = gate(p, trained, registered, metrics, recipe)
    drill("gate")
    done = {"params": asdict(p), "best": best, "trained": trained, "registered": registered, "metrics": metrics}
    done |= {"gated": gated, "night": night, "night_id": night_id}
    approval = sign_off(p, done, _log) if p.require_approval and gated["decision"]["promote"] else None
    return _decide(p, done, approval, clock)


def _decide(p: PipelineParams, done: dict, approval: Approval | None, clock: _Clock) -> NightResult:
    """Promote or not (the gate's decision, the reviewer's answer), close the night, publish its summary."""
    best, trained, registered, metrics, night = (done[k] for k in ("best", "trained", "registered", "metrics", "night"))
    with clock("promote"):
        decision = promote(p, best, trained, registered, metrics, done["gated"], approval)
    outcome = {"registered_version": registered["version"], "promoted": decision["promote"], "study": best}
    extra = {**outcome, "metrics": metrics, "registered": registered, "decision": decision}
    record = close_night(p, done["night_id"], night, extra)
    markdown = summaries.summary_markdown(best, metrics, registered, decision, night)
    desc = "the case, metrics, promotion decision, MLflow run"
    artifacts.publish(p.registered_name, night, record, markdown, desc, metrics, registered, decision)
    return _result(p, done["night_id"], best, night, record, clock, registered, metrics, decision)


def vae_pipeline(**params: Any) -> dict:  # the same name as the flow below: see its comment
    p = PipelineParams(**params)  # bad parameters fail here
    need_server(p)
    clock = _Clock()
    if (done := signoff.parked(p)) is not None:  # resumed after a suspended sign-off: decide, nothing more
        result = _decide(p, done, sign_off(p, done, _log), clock)
        signoff.decided(p, done)
        return result
    try:
        with night_lock(p, _log):
            return _night(p, clock)
    finally:
        signoff.tend(p, _log)


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


vae_pipeline.__signature__ = _signature()
vae_pipeline.__doc__ = PipelineParams.__doc__
# A served deployment's entrypoint is this file and the function's own name: the function must be named as the
# flow it becomes, or the runner loads the bare function, which Prefect turns into a flow without these hooks.
vae_pipeline = flow(name="vae-pipeline", log_prints=True, on_failure=[record_failure], on_crashed=[record_failure])(
    vae_pipeline
)


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
    print(json.dumps(summaries.result_line(result)))
    if result["registered"] is not None:
        print("\n" + summaries.mlflow_hint(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
