"""The pipeline's promotion, in two steps with an optional sign-off between them (flows/pipeline.py pauses
there when require_approval is set): gate() decides, promote() records the decision and moves `champion`.
vae/night/steps.py's gate_step and promote_step call them with the run's parameters.

gate() scores the champion again on this run's test split, image by image with the candidate's noise
(vae/comparison.py), so the gate compares like with like and knows whether the gain is real. Both steps
write the comparison artifact on the candidate's run (the gate's verdict for the reviewer, then the final
decision); promote() writes the model card into the registered version's description.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vae.checkpoint import load_model
from vae.comparison import comparison_figures, model_card, paired_gain, write_comparison
from vae.data import load
from vae.evaluation import evaluate_model, per_image_neg_elbo
from vae.quality import sample_quality
from vae.tracking import candidate, registry, review


def _shown(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "figures"}


def gate(
    trained: dict,
    registered: dict,
    metrics: dict,
    min_improvement: float,
    iw_samples: int,
    require_approval: bool,
    recipe: dict | None = None,
    max_fid_increase: float | None = None,
) -> dict[str, Any]:
    """The decision on the registered candidate (nothing moved yet), with the champion's metrics on the
    same test images and the interval of the gain, and the seed recipe's (`recipe`: the pipeline's baseline)
    beside them. max_fid_increase: the optional sample gate (off by default). With require_approval, the
    comparison is logged now, for the reviewer to read before answering."""
    uri, name, version = registered["tracking_uri"], registered["name"], str(registered["version"])
    model, cfg, _ = load_model(trained.get("best_checkpoint") or trained["checkpoint"])
    data = load(cfg.data)
    label = f"challenger v{version}"
    columns: list[tuple[str, dict]] = [(label, _shown(metrics))]
    champ, champion_value, interval, shown, scored = candidate.champion(uri, name), None, None, None, None
    if champ is not None and str(champ.version) != version:
        champion_model, champion_cfg = candidate.load_champion(uri, name)
        champion_cfg = dataclasses.replace(champion_cfg, data=cfg.data)  # the same images, the same targets
        scored = evaluate_model(champion_model, champion_cfg, data, iw_samples=iw_samples)
        scored.update(sample_quality(champion_model, data, cfg.data.data_dir))
        champion_value = scored["neg_elbo"]
        interval = paired_gain(
            per_image_neg_elbo(champion_model, data.test.images, champion_cfg),
            per_image_neg_elbo(model, data.test.images, cfg),
        ).as_dict()
        shown = (f"champion v{champ.version}", champion_model)
        columns.append((shown[0], scored))
    if recipe is not None:
        columns.append((f"seed recipe (trial {recipe.get('trial')})", _shown(recipe["metrics"])))
    d = registry.judge(uri, name, version, min_improvement, champion_value=champion_value, interval=interval)
    d = sample_gate(d, metrics, scored, max_fid_increase)
    out = Path(trained["out"]) / f"comparison-v{version}"
    comparison_figures(out, (label, model), shown, data.test.images)
    gated = {"decision": d.as_dict(), "columns": columns, "folder": str(out)}
    if require_approval:
        _write(gated, registered, {**d.as_dict(), "awaiting": True})
    return gated


def sample_gate(
    d: registry.Decision, challenger: dict, champion: dict | None, max_fid_increase: float | None
) -> registry.Decision:
    """The optional gate on sample quality: a challenger that the -ELBO gate would promote is refused when its
    sample_fid is more than max_fid_increase above the champion's, both measured on the same test images."""
    if max_fid_increase is None or not d.promote or not champion:
        return d
    a, b = challenger.get("sample_fid"), champion.get("sample_fid")
    if a is None or b is None:
        return dataclasses.replace(d, reason=f"{d.reason}; no sample_fid to gate on")
    if a - b > max_fid_increase:
        return dataclasses.replace(
            d,
            promote=False,
            reason=f"refused by the sample gate: sample_fid {a:.1f} is {a - b:.1f} above the champion's {b:.1f} "
            f"(max_fid_increase={max_fid_increase}), though {d.reason}",
        )
    return dataclasses.replace(
        d, reason=f"{d.reason}; sample_fid {a:.1f} against the champion's {b:.1f}: within the gate"
    )


def _write(gated: dict, registered: dict, decision: dict) -> None:
    title = f"{registered['name']} v{registered['version']} against the champion"
    write_comparison(Path(gated["folder"]), title, [tuple(c) for c in gated["columns"]], decision)
    review.log_comparison(registered["tracking_uri"], registered["run_id"], gated["folder"])


def promote(
    trained: dict, registered: dict, metrics: dict, gated: dict, approval: dict | None = None
) -> dict[str, Any]:
    """Act on the gate's decision (and the reviewer's answer, if one was asked): tags on the version,
    `champion` moved on a promotion, promotion.json and the comparison on the run, the model card."""
    uri, name, version, run_id = (registered[k] for k in ("tracking_uri", "name", "version", "run_id"))
    d = registry.apply(uri, name, registry.Decision.from_dict(gated["decision"]), approval)
    candidate.record_decision(uri, run_id, d.as_dict())
    _write(gated, registered, d.as_dict())
    history = candidate.read_history(trained["out"])
    facts = {
        "name": name,
        "version": version,
        "run_id": run_id,
        "decision": d.as_dict(),
        "metrics": _shown(metrics),
        "trained": {**trained, "epochs_run": len(history)},
        "git_commit": review.git_commit(uri, run_id),
    }
    review.set_model_card(uri, name, str(version), model_card(facts))
    return d.as_dict()
