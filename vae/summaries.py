"""The night's summaries: in Markdown, the Prefect artifact `vae-pipeline-summary` of a night that registered a
candidate and of a quiet night (nothing new); for `python -m flows.pipeline`, its JSON line and MLflow hint."""

from __future__ import annotations

from typing import Any

from vae import stores
from vae.records import NightResult


def quiet_markdown(night: dict[str, Any], record: dict[str, Any]) -> str:
    champion = f"v{record['champion']} stays champion" if record["champion"] else "there is no champion yet"
    return (
        f"# {record['name']}: no new candidate\n\n**Case:** `{night['case']}`: {night['reason']}.\n\n"
        f"Nothing was trained or registered; {champion}.\n\n"
        f"MLflow run `{record['run_id']}` at `{record['tracking_uri']}`.\n"
    )


def summary_markdown(study: dict, metrics: dict, registered: dict, decision: dict, night: dict) -> str:
    rows = [
        ("test -ELBO (nats/image)", metrics.get("neg_elbo")),
        ("reconstruction", metrics.get("recon")),
        ("KL", metrics.get("kl")),
        ("recon at z = mu", metrics.get("recon_at_mean")),
        (f"IW NLL (K={metrics.get('iw_samples', 0)})", metrics.get("iw_nll")),
        ("active units", metrics.get("active_units")),
        ("seed recipe's test -ELBO, same images", metrics.get("recipe_neg_elbo")),
        ("gain over the seed recipe (nats)", metrics.get("gain_over_recipe")),
        ("sample FID (lower is better)", metrics.get("sample_fid")),
        ("sample class entropy (nats)", metrics.get("sample_class_entropy")),
        ("digit classifier test accuracy", metrics.get("classifier_accuracy")),
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


def result_line(result: NightResult) -> dict[str, Any]:
    """The JSON line `python -m flows.pipeline` prints: the case, the stage times, the search, and the registered
    version (or, on a quiet night, the champion that stays)."""
    night, study, reg = result["night"], result["study"], result["registered"]
    out: dict[str, Any] = {
        "case": night["case"],
        "night_run_id": result["night_run_id"],
        "reason": night["reason"],
        "stage_seconds": result["seconds"],
        "tune": {k: study.get(k) for k in ("study", "trials", "finish_seconds", "counts", "best_params")},
    }
    if reg is None:
        return {
            **out,
            "registered": None,
            "champion": result["record"]["champion"],
            "run_id": result["record"]["run_id"],
        }
    metrics, decision = result["metrics"] or {}, result["decision"] or {}
    return {
        **out,
        "run_id": reg["run_id"],
        "model": reg["name"],
        "version": reg["version"],
        "promoted": decision.get("promote"),
        "test_neg_elbo": metrics.get("neg_elbo"),
        "recipe_neg_elbo": metrics.get("recipe_neg_elbo"),
        "gain_over_recipe": metrics.get("gain_over_recipe"),
        "sample_fid": metrics.get("sample_fid"),
    }


def mlflow_hint(result: NightResult) -> str:
    """Where to look at a night that registered a version: the MLflow UI command, the runs, the version."""
    reg, decision = result["registered"], result["decision"] or {}
    assert reg is not None
    role = "champion" if decision.get("promote") else "challenger"
    uri = stores.redact(reg["tracking_uri"])
    # A server already serves the UI at its own URL; a local store needs `mlflow ui` to serve it.
    where = f"open {uri}" if uri.startswith(("http://", "https://")) else (
        f"run `mlflow ui --backend-store-uri {uri}` and open http://127.0.0.1:5000")  # fmt: skip
    return (
        f"MLflow: {where} "
        f"(experiment {reg['name']}: night run {result['night_run_id']}, its training run {reg['run_id']} holds "
        f"the model); registered model {reg['name']} v{reg['version']} ({role})."
    )


NIGHTS_KEPT = 60  # rows of the nights table: two months of nightly runs


def nights_key(model: str) -> str:
    """The Prefect artifact key of a model's nights table (keys take lowercase letters, digits and dashes)."""
    return "nights-" + "".join(c if c.isalnum() else "-" for c in model.lower()).strip("-")


def night_row(night: dict[str, Any], record: dict[str, Any], metrics: dict | None, registered: dict | None,
              decision: dict | None, when: str) -> dict[str, Any]:  # fmt: skip
    """One night as a row of the nights table: when, the case, what was registered and decided, the numbers."""
    metrics = metrics or {}
    return {
        "night": when,
        "case": night["case"],
        "registered": f"v{registered['version']}" if registered else "",
        "promoted": bool(decision and decision["promote"]),
        "champion": f"v{record['champion']}" if record.get("champion") else "",
        "test_neg_elbo": metrics.get("neg_elbo"),
        "gain_over_recipe": metrics.get("gain_over_recipe"),
        "sample_fid": metrics.get("sample_fid"),
        "mlflow_run": record["run_id"],
    }


def nights_table(previous: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of the last NIGHTS_KEPT nights, newest last: the previous table's rows and this night's."""
    return [*previous, row][-NIGHTS_KEPT:]


def version_link(tracking_uri: str, name: str, version: str) -> str | None:
    """The MLflow UI page of a registered version, where the tracking URI is a server's (None for a local store,
    which has no page until `mlflow ui` serves it)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"
