"""Pruning against no pruning on the same wall-clock budget, and what MLflow tracking costs per trial.

    python benchmarks/tune_efficiency.py [--budget 75] [--reps 2] [--epochs 6] [--subset 1000]
                                         [--pruner hyperband|median] [--json FILE]

Each arm is one `vae tune` process (TPE, the same sampler seed in both arms of a repetition) with
`--timeout BUDGET`: no trial starts after BUDGET seconds, the running one finishes. Arms alternate
PRUNER, none, PRUNER, none. Data: the embedded mnist-5k, the first SUBSET training images, the full
500-image validation split as the objective. Space: the default one with the model fixed to the MLP VAE
(a conv-VAE epoch costs 3-6x more on this CPU, and would leave a few trials per budget).

Reported per arm: trials finished (complete + pruned), epochs trained in all, best validation -ELBO, and the
epochs the pruning arm had spent when it first matched the no-pruning arm's best (goal: at most half of the
no-pruning arm's epochs). Tracking: per trial, seconds inside MLflow calls (run creation, params, one
log_batch per epoch, final metrics) against the trial's training seconds; plus the once-per-worker finish
(figures, trial table, the best model's log_model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae.child import last_json

REPO = Path(__file__).resolve().parents[1]
SPACE = 'model = "vae"\n'  # everything else: vae.tune.DEFAULT_SPACE


def run_arm(folder: Path, pruner: str, seed: int, a: argparse.Namespace) -> dict:
    (folder / "space.toml").write_text(SPACE)
    cmd = [
        sys.executable,
        "-m",
        "vae",
        "tune",
        "--dataset",
        "mnist-5k",
        "--subset",
        str(a.subset),
        "--epochs",
        str(a.epochs),
        "--trials",
        "100000",
        "--timeout",
        str(a.budget),
        "--pruner",
        pruner,
        "--sampler",
        "tpe",
        "--sampler-seed",
        str(seed),
        "--space",
        str(folder / "space.toml"),
        "--study",
        f"bench-{pruner}-{seed}",
        "--storage",
        f"sqlite:///{folder / 'optuna.db'}",
        "--tracking-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--out",
        str(folder / "trials"),
        "--json",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{pruner} arm failed:\n{r.stderr[-3000:]}")
    summary = last_json(r.stdout)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=summary["study"], storage=f"sqlite:///{folder / 'optuna.db'}")
    done = sorted(
        (t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")), key=lambda t: t.datetime_complete
    )
    curve, spent, best = [], 0, float("inf")  # (epochs spent so far, best complete value so far)
    for t in done:
        spent += len(t.intermediate_values)
        if t.state.name == "COMPLETE":
            best = min(best, t.value)
        curve.append((spent, best))
    tracking = [t.user_attrs["tracking_seconds"] for t in done]
    train = [t.user_attrs["train_seconds"] for t in done]
    return {
        "pruner": pruner,
        "seed": seed,
        "wall_s": round(wall, 1),
        "loop_s": summary["seconds"],
        "finish_s": summary.get("finish_seconds"),
        "trials": len(done),
        "complete": summary["counts"]["complete"],
        "pruned": summary["counts"]["pruned"],
        "fail": summary["counts"]["fail"],
        "epochs": spent,
        "best": summary["best_value"],
        "curve": curve,
        "tracking_s_per_trial": statistics.median(tracking),
        "train_s_per_trial": statistics.median(train),
        "tracking_ratio": statistics.median(x / y for x, y in zip(tracking, train) if y > 0),
    }


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in curve if best <= target), None)


def table(a: argparse.Namespace, rows: list[dict]) -> None:
    for rep in sorted({r["seed"] for r in rows}):
        pruned, plain = [r for r in rows if r["seed"] == rep]
        for r in (pruned, plain):  # epochs spent when the arm first matched (or came within 1 nat of) plain's best
            r["reach"] = epochs_to_reach(r["curve"], plain["best"])
            r["reach_1"] = epochs_to_reach(r["curve"], plain["best"] + 1.0)
    print(
        f"\nmnist-5k, first {a.subset} training images, {a.epochs} epochs per trial, budget {a.budget:.0f} s "
        f"per arm, TPE seed = rep\n"
    )
    print(
        "| rep | pruner | trials (complete / pruned) | epochs trained | best val -ELBO | epochs to reach the "
        "no-pruning best (to within 1 nat) | tracking s / trial | training s / trial | tracking / training "
        "| finish s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reach = f"{'not reached' if r['reach'] is None else r['reach']} ({r['reach_1'] or 'not reached'})"
        print(
            f"| {r['seed']} | {r['pruner']} | {r['trials']} ({r['complete']} / {r['pruned']}) | {r['epochs']} | "
            f"{r['best']:.2f} | {reach} | {r['tracking_s_per_trial']:.3f} | {r['train_s_per_trial']:.2f} | "
            f"{100 * r['tracking_ratio']:.1f}% | {r['finish_s']:.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=75, help="seconds after which an arm starts no new trial")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--subset", type=int, default=1000)
    p.add_argument("--pruner", default="hyperband", help="the pruning arm's pruner: hyperband or median")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--table-from", help="print the table of a results file written by --json; run nothing")
    a = p.parse_args()
    if a.table_from:
        saved = json.loads(Path(a.table_from).read_text())
        table(argparse.Namespace(**saved["args"]), saved["rows"])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        for rep in range(a.reps):
            for pruner in (a.pruner, "none"):
                folder = Path(tmp) / f"{pruner}-{rep}"
                folder.mkdir()
                rows.append(run_arm(folder, pruner, rep, a))
                print(
                    f"rep {rep} {pruner}: {rows[-1]['trials']} trials, {rows[-1]['epochs']} epochs, "
                    f"best {rows[-1]['best']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    table(a, rows)


if __name__ == "__main__":
    main()
