"""Does the night's search beat the recipe it starts from, on every sampler seed, and at what cost?

    python benchmarks/search_quality.py [--seeds 0 1 2 3 4] [--arms default,gp,...] [--nights] [--old-rev REV]
                                        [--cache runs/search_quality] [--json FILE]

Three parts, each run in fresh folders (own Optuna storage, MLflow store, Prefect home), on the embedded mnist-5k
(4000/500/500), 2 threads:
  recipe   the seed recipe alone (`vae train` at the night's budget: 50 epochs, patience 5), scored on the test split;
  arms     the night's search alone (`vae tune --no-tracking`, the night's trials, budget, first rung and start-up)
           with each sampler and pruner, per sampler seed; its winner's best epoch scored on the test split;
  nights   `--nights`: the whole default night (`python -m flows.pipeline` with the Makefile's PIPELINE_ARGS and
           `--sampler-seed S`), whole-process wall time; with `--old-rev REV`, the flow of that commit (its own
           make-run arguments, selection at 10 epochs then the best retrained at 50) as many times, for comparison.
Every run's result is kept in --cache as JSON, so a rerun only runs what is missing (delete the folder to redo).
The table comes last; --json writes it with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae.child import last_json

REPO = Path(__file__).resolve().parents[1]
# The default night, as the Makefile runs it (keep in step with PIPELINE_ARGS there).
NIGHT = ["--dataset", "mnist-5k", "--trials", "8", "--epochs", "50", "--iw-samples", "100"]
SEARCH = {"trials": 8, "epochs": 50, "patience": 5, "min_epochs": 3, "startup_trials": 4}
OLD_NIGHT = ["--dataset", "mnist-5k", "--trials", "16", "--tune-epochs", "10", "--epochs", "50", "--iw-samples", "1000"]
ARMS = {  # name: (sampler, pruner[, extra vae tune arguments])
    "default": ("tpe", "asha"),
    "no-anchors": ("tpe", "asha", "--no-anchors"),
    "tpe-multivariate": ("tpe-multivariate", "asha"),
    "gp": ("gp", "asha"),
    "cmaes": ("cmaes", "asha"),
    "random": ("random", "asha"),
    "asha-global": ("tpe", "asha-global"),
    "hyperband": ("tpe", "hyperband"),
    "median": ("tpe", "median"),
    "none": ("tpe", "none"),
}
ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 7200) -> tuple[dict, float]:
    """A command whose last stdout line starting with '{' is its JSON result; (result, wall seconds)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV, **(env or {})}
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return last_json(r.stdout), wall


def vae(*args: str) -> list[str]:
    return [sys.executable, "-m", "vae", *map(str, args)]


def test_neg_elbo(checkpoint: str, cwd: Path) -> float:
    out, _ = run(vae("evaluate", checkpoint, "--no-figures", "--no-sample-metrics", "--json"), cwd)
    return out["neg_elbo"]


def cached(cache: Path, name: str, compute) -> dict:
    path = cache / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def recipe(tmp: Path) -> dict:
    out, wall = run(
        vae("train", "--dataset", "mnist-5k", "--epochs", SEARCH["epochs"], "--patience", SEARCH["patience"])
        + ["--out", str(tmp / "recipe"), "--no-progress", "--json"],
        tmp,
    )
    return {"test_neg_elbo": test_neg_elbo(out["best_checkpoint"], tmp), "wall": wall, "best_epoch": out["best_epoch"]}


def arm(tmp: Path, sampler: str, pruner: str, seed: int, *extra: str) -> dict:
    s = SEARCH
    out, wall = run(
        vae("tune", "--dataset", "mnist-5k", "--trials", s["trials"], "--epochs", s["epochs"])
        + ["--patience", str(s["patience"]), "--min-epochs", str(s["min_epochs"]), "--startup-trials"]
        + [str(s["startup_trials"]), "--sampler", sampler, "--pruner", pruner, "--sampler-seed", str(seed)]
        + ["--no-tracking", "--storage", f"sqlite:///{tmp / 'optuna.db'}", "--out", str(tmp / "study"), "--json"]
        + list(extra),
        tmp,
    )
    import optuna  # lazy: only this part reads the study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=out["study"], storage=f"sqlite:///{tmp / 'optuna.db'}").get_trials()
    return {
        "test_neg_elbo": test_neg_elbo(out["best_checkpoint"], tmp),
        "val_neg_elbo": out["best_value"],
        "wall": wall,
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "full_budget_trials": sum(len(t.intermediate_values) >= s["epochs"] - s["patience"] for t in trials),
        "best_trial": out["best_trial"],
        "best_params": out["best_params"],
        "counts": out["counts"],
    }


def night(tmp: Path, args: list[str], code: Path) -> dict:
    # a fresh machine's: no Prefect cache, no data cache (the sample metrics' classifier is trained in the night)
    env = {"PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(code), "VAE_DATA_DIR": str(tmp / "data")}
    out, wall = run([sys.executable, "-m", "flows.pipeline", *args, "--workdir", str(tmp / "work")], tmp, env)
    keys = ("test_neg_elbo", "recipe_neg_elbo", "gain_over_recipe", "sample_fid", "stage_seconds", "tune")
    return {"wall": wall, **{k: out.get(k) for k in keys}}


def stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def row(name: str, runs: list[dict], base: float, what: str) -> dict:
    test = [r["test_neg_elbo"] for r in runs]
    gains = [base - v for v in test]
    return {
        "arm": name,
        "what": what,
        "runs": len(runs),
        "test_neg_elbo": stats(test),
        "gain": stats(gains),
        "seeds_3_nats": sum(g >= 3 for g in gains),
        "spread": max(test) - min(test),
        "wall_median": statistics.median(r["wall"] for r in runs),
        "epochs_mean": statistics.fmean(r["epochs_trained"] for r in runs) if "epochs_trained" in runs[0] else None,
    }


def table(rows: list[dict], base: dict) -> str:
    lines = [
        f"seed recipe alone (`vae train`, 50 epochs, patience 5): test -ELBO {base['test_neg_elbo']:.2f} nats, "
        f"{base['wall']:.0f} s",
        "",
        "| arm | what | runs | champion test -ELBO mean (sd) | min-max | gain over recipe mean (min) | "
        "runs >= 3 nats | spread | wall s (median) | epochs trained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, g = r["test_neg_elbo"], r["gain"]
        epochs = f"{r['epochs_mean']:.0f}" if r["epochs_mean"] is not None else "-"
        lines.append(
            f"| {r['arm']} | {r['what']} | {r['runs']} | {t['mean']:.2f} ({t['sd']:.2f}) "
            f"| {t['min']:.2f}-{t['max']:.2f} "
            f"| {g['mean']:.2f} ({g['min']:.2f}) | {r['seeds_3_nats']}/{r['runs']} | {r['spread']:.2f} "
            f"| {r['wall_median']:.0f} | {epochs} |"
        )
    return "\n".join(lines)


def old_checkout(rev: str, into: Path) -> Path:
    folder = into / f"old-{rev}"
    if not folder.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev], check=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--nights", action="store_true", help="also the whole default night per seed (the flow)")
    p.add_argument("--old-rev", help="also the flow of this commit, as many times as there are seeds")
    p.add_argument("--cache", default=str(REPO / "runs" / "search_quality"))
    p.add_argument("--json", help="write the table and every run here")
    a = p.parse_args()
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    def fresh(compute):
        def inner():
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                return compute(Path(tmp))

        return inner

    base = cached(cache, "recipe", fresh(recipe))
    rows, every = [], {"recipe": base}
    for name in [x for x in a.arms.split(",") if x]:
        sampler, pruner, *extra = ARMS[name]
        runs = [
            cached(
                cache, f"arm-{name}-{s}", fresh(lambda t, s=s, arm_of=ARMS[name]: arm(t, *arm_of[:2], s, *arm_of[2:]))
            )
            for s in a.seeds
        ]
        every[f"arm-{name}"] = runs
        rows.append(row(name, runs, base["test_neg_elbo"], f"vae tune: {sampler} + {pruner} {' '.join(extra)}".strip()))
        print(table(rows, base).splitlines()[-1], flush=True)
    if a.nights:
        runs = [
            cached(cache, f"night-{s}", fresh(lambda t, s=s: night(t, [*NIGHT, "--sampler-seed", str(s)], REPO)))
            for s in a.seeds
        ]
        every["nights"] = runs
        rows.append(row("night", runs, base["test_neg_elbo"], "the default night (make run), whole process"))
    if a.old_rev:
        code = old_checkout(a.old_rev, cache)
        runs = [cached(cache, f"old-{a.old_rev}-{i}", fresh(lambda t: night(t, OLD_NIGHT, code))) for i in a.seeds]
        every["old"] = runs
        rows.append(row(f"old {a.old_rev}", runs, base["test_neg_elbo"], "the night before: 10 epochs, then 50"))
    text = table(rows, base)
    print("\n" + text)
    if a.json:
        Path(a.json).write_text(json.dumps({"table": rows, "recipe": base, "runs": every}, indent=2) + "\n")


if __name__ == "__main__":
    main()
