"""The night's summaries in Markdown: the Prefect artifact `vae-pipeline-summary` of a night that registered a
candidate, and of a quiet night (nothing new)."""

from __future__ import annotations

from typing import Any


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
