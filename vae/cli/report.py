"""`vae report`: the HTML page of what a model does (vae.uses.report), attached to its MLflow run."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from vae.cli.common import load_model_ref, shows
from vae.data import load
from vae.errors import ConfigError
from vae.uses.report import write_report


def _text(r: dict[str, Any]) -> str:
    m = r["metrics"]
    return (
        f"report: {r['out']} (figures in {r['files']}), {r['seconds']} s\n"
        f"data: {r['dataset']} {r['split']}, fingerprint {r['fingerprint'][:16]}; "
        + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
        + "\nlogged to MLflow: "
        + (r["logged_to"] or "no (pass --run-id, or a models:/ URI)")
    )


@shows(_text)
def cmd_report(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out)
    if out.suffix not in (".html", ".htm"):
        raise ConfigError(f"--out {out} is invalid: expected an .html file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    model, cfg, state = load_model_ref(a.model, a.tracking_uri, a.device)
    source = state.get("source") or {}
    run_id = None if a.no_log else (a.run_id or source.get("run_id"))
    store = a.tracking_uri or source.get("tracking_uri")
    if run_id:  # checked before the report is computed, not after
        from vae.tracking.models import check_run, log_files  # lazy: mlflow, only when logging

        check_run(run_id, store)
    changes = {k: v for k, v in {"dataset": a.dataset, "data_dir": a.data_dir, "mirror": a.mirror}.items() if v}
    data_cfg = dataclasses.replace(cfg.data, subset=None, **changes)
    data = load(data_cfg, download=True)
    result = write_report(
        model,
        dataclasses.replace(cfg, data=data_cfg),
        state,
        data,
        out,
        model_ref=str(a.model),
        split=a.split,
        seed=a.seed,
    )
    result["split"] = a.split
    result["logged_to"] = log_files(run_id, [out], [Path(result["files"])], "report", store) if run_id else None
    return result
