"""`vae registry list|promote|rollback`: the MLflow registry by hand (the pipeline does the same steps)."""
from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub) -> dict[str, Any]:
    p = sub.add_parser("registry", help="list, promote and roll back registered model versions")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="registered model (default vae-<dataset>)")
    common.add_argument("--dataset", default="mnist-5k", help="names the model vae-<dataset> when --name is absent")
    common.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI or mlruns/)")
    common.add_argument("--json", action="store_true", help="print the result as one JSON object")
    rsub.add_parser("list", parents=[common], help="versions with their aliases, test -ELBO and decisions")
    pp = rsub.add_parser("promote", parents=[common], help="make a version champion if it beats the champion")
    pp.add_argument("--version", required=True)
    pp.add_argument("--min-improvement", type=float, default=0.5, help="nats of test -ELBO it must gain (default 0.5)")
    pp.add_argument("--force", action="store_true", help="skip the comparison")
    rsub.add_parser("rollback", parents=[common], help="point champion back at the previous champion")
    return {"registry": cmd_registry}


def cmd_registry(a) -> dict[str, Any]:
    from vae import registry
    if a.tracking_uri:
        uri = a.tracking_uri
    else:
        from vae.tracking import default_tracking_uri
        uri = default_tracking_uri()
    a.printed = not a.json
    name = a.name or registry.model_name(a.dataset)
    if a.action == "list":
        rows = registry.list_versions(uri, name)
        if not a.json:
            print(f"{'version':>7}  {'aliases':<20} {'test -ELBO':>10}  {'decision':<9} fingerprint")
            for r in rows:
                value = f"{r['test_neg_elbo']:.3f}" if r["test_neg_elbo"] is not None else "-"
                print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {value:>10}  "
                      f"{r['decision'] or '-':<9} {r['fingerprint'][:12]}")
        return {"name": name, "versions": rows}
    if a.action == "promote":
        d = registry.promote(uri, name, a.version, a.min_improvement, force=a.force)
        if not a.json:
            print(f"{name} v{a.version}: {'promoted to champion' if d.promote else 'not promoted'}: {d.reason}")
        return d.as_dict()
    result = registry.rollback(uri, name)
    if not a.json:
        print(f"{name}: champion is v{result['champion']} again (v{result['rolled_back']} rolled back)")
    return result
