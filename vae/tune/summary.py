"""The end of a worker's run of a study: close orphaned trial runs, log the best trial's model, the study's
plots and trial table on the MLflow parent run, and the summary that `vae tune --json` prints. Untracked
(NullTracker), only the summary: no run to close or log to, no model, no plots (they would go nowhere)."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from vae.figures import pyplot
from vae.stores import redact
from vae.tune.seeds import is_recipe
from vae.tune.storage import counted
from vae.tune.untracked import NullTracker

if TYPE_CHECKING:
    from vae.tracking.study import StudyTracker


def summarize(
    st: optuna.Study,
    tracker: StudyTracker | NullTracker,
    space: dict[str, Any],
    storage_url: str,
    n_trials: int,
    folder: Path,
    ran: int,
    seconds: float,
) -> dict[str, Any]:
    trials = st.get_trials(deepcopy=False)
    for t in trials:  # a killed worker's child run would otherwise stay RUNNING in MLflow
        if t.state == TrialState.FAIL and t.user_attrs.get("mlflow_run_id") and not t.user_attrs.get("fail_reason"):
            tracker.close_orphan(t.user_attrs["mlflow_run_id"], "worker lost: heartbeat stale, trial re-queued")
    counts = {
        s: sum(t.state == getattr(TrialState, s.upper()) for t in trials)
        for s in ("complete", "pruned", "fail", "running", "waiting")
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    recipe = next((t for t in complete if is_recipe(t)), None)
    model_uri, model_id = _best_model(st, tracker, best)
    skipped = _finish_parent(st, tracker, best, counts)
    tracked = tracker.uri is not None
    return {
        "study": st.study_name,
        "storage": redact(storage_url),
        "n_trials": n_trials,
        "trials": len(counted(trials)),
        "counts": counts,
        "surplus": sum(bool(t.user_attrs.get("surplus")) for t in trials),
        **_best_fields(best),
        "recipe": _trial_record(recipe),
        "tracking": tracked,
        "parent_run_id": tracker.parent_id,
        "experiment_id": tracker.experiment_id,
        "tracking_uri": tracker.uri,
        "best_model_uri": model_uri,
        "best_model_id": model_id,
        "out": str(folder),
        "trials_run_here": ran,
        "seconds": round(seconds, 3),
        "search_space": space,
        "figures_skipped": skipped,
    }


def _finish_parent(st: optuna.Study, tracker, best, counts: dict[str, int]) -> list[str]:
    """Logs the study's figures, counts and best trial on its parent run; returns the figures it skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        skipped = plots(st, Path(tmp)) if tracker.uri is not None else ["all: tracking is off (--no-tracking)"]
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        if best is not None:
            metrics["best_val_neg_elbo"] = best.value
        tracker.finish_parent(
            Path(tmp),
            metrics,
            {
                "best_trial": best.number if best else "none",
                "best_trial_run_id": best.user_attrs.get("mlflow_run_id", "none") if best else "none",
                "best_params": json.dumps(best.params) if best else "{}",
                "figures_skipped": "; ".join(skipped) or "none",
            },
        )
    return skipped


def _best_fields(best: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    attrs = best.user_attrs if best else {}
    return {
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "best_config": attrs.get("config"),
        "best_checkpoint": attrs.get("checkpoint"),
        "best_epoch": attrs.get("best_epoch"),
        "best_run_id": attrs.get("mlflow_run_id"),
        "best_code_version": attrs.get("code_version"),
    }


def _trial_record(t: optuna.trial.FrozenTrial | None) -> dict[str, Any] | None:
    if t is None:
        return None
    keys = ("config", "checkpoint", "best_epoch", "mlflow_run_id")
    return {"trial": t.number, "value": t.value, **{k: t.user_attrs.get(k) for k in keys}}


def _best_model(
    st: optuna.Study, tracker: StudyTracker | NullTracker, best: optuna.trial.FrozenTrial | None
) -> tuple[str | None, str | None]:
    """The best trial's best epoch (best.pt) as the pyfunc model of its run, logged once per best trial:
    (model URI, MLflow model id), or (None, None) where there is no run to hold it."""
    if best is None or tracker.uri is None or not best.user_attrs.get("mlflow_run_id"):
        return None, None  # no complete trial, tracking off, or the best trial ran untracked
    if st.user_attrs.get("best_model_trial") == best.number:
        return st.user_attrs.get("best_model_uri"), st.user_attrs.get("best_model_id")
    ckpt = Path(best.user_attrs.get("checkpoint", ""))
    if not ckpt.is_file():  # another machine's worker ran the best trial
        return None, None
    model_uri, model_id = tracker.log_model(best.user_attrs["mlflow_run_id"], ckpt)
    st.set_user_attr("best_model_uri", model_uri)
    st.set_user_attr("best_model_id", model_id)
    st.set_user_attr("best_model_trial", best.number)
    return model_uri, model_id


def plots(study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's plots as PNGs, and every trial as a CSV row; returns what was skipped and why."""
    from optuna.visualization import matplotlib as vis  # lazy: imports matplotlib, only at the end of a study

    plt = pyplot()
    skipped = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    charts = {
        "optimization_history": vis.plot_optimization_history,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "param_importances": vis.plot_param_importances,
    }
    for name, plot in charts.items():
        if len(complete) < (2 if name == "param_importances" else 1):
            skipped.append(
                f"{name}: needs {'2 complete trials' if name == 'param_importances' else 'a complete trial'}"
            )
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
        folder / "trials.csv", index=False
    )
    return skipped
