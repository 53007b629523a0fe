"""Issue 6, part 1: the seed recipe side by side with this project, at the same 10-epoch budget.

    python benchmarks/quality_seed.py [--dataset idx:../shared/data/mnist] [--epochs 10] [--trials 16] \
        [--json benchmarks/results/quality_seed.json]

Rows: the seed's own loop (pytorch/examples' vae/main.py: PIL + ToTensor + DataLoader), `vae train` with the
seed's configuration, and the best configuration a `vae tune` study finds when every trial gets the same
epoch budget (the tuned row is that trial's own weights: no extra training). Each is scored by the project's
evaluator on the official test set: -ELBO with z sampled, and recon_at_mean (z = mu; the seed prints
recon_at_mean + KL). Grey-level targets, as the seed uses them. Published reference for the seed's model:
105.59 nats after 10 epochs (pytorch/examples).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import SHARED, seed_worker, vae_worker  # noqa: E402

from vae.child import last_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The built-in space is MLP-only; --space benchmarks/spaces/conv.toml searches the convolutional VAE
# (35-40 s per epoch of full MNIST on one CPU thread here, from the study's trial histories).
SPACE = """\
model = "vae"
lr = {low = 5e-4, high = 5e-3, log = true}
batch_size = [32, 64, 128]
latent = {low = 10, high = 64, log = true}
hidden_width = {low = 256, high = 1024, step = 128}
hidden_depth = {low = 1, high = 2}
"""


def vae_cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "vae", *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return last_json(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=f"idx:{SHARED}" if SHARED.exists() else "mnist-5k")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--space", help="a space file instead of the built-in MLP space")
    p.add_argument("--json")
    a = p.parse_args()
    rows = {}
    t0 = time.time()
    r = seed_worker(a.dataset, a.epochs, seed=0)
    rows["seed loop"] = {**r, "seconds": time.time() - t0}
    t0 = time.time()
    r = vae_worker(a.dataset, a.epochs, seed=0)
    rows["vae train, seed config"] = {**r, "seconds": time.time() - t0}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "space.toml").write_text(Path(a.space).read_text() if a.space else SPACE)
        t0 = time.time()
        study = vae_cli(
            "tune",
            "--dataset",
            a.dataset,
            "--trials",
            str(a.trials),
            "--epochs",
            str(a.epochs),
            "--space",
            f"{tmp}/space.toml",
            "--storage",
            f"sqlite:///{tmp}/optuna.db",
            "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--out",
            f"{tmp}/study",
            "--sampler-seed",
            "0",
        )
        seconds = time.time() - t0
        ckpt = Path(study["best_checkpoint"])
        test = vae_cli("evaluate", str(ckpt), "--no-figures")
    rows["vae tune best"] = {
        **test,
        "seconds": seconds,
        "best_params": study["best_params"],
        "trials": study.get("counts", study.get("trials")),
    }
    result = {
        "dataset": a.dataset.replace(str(REPO.parent), ".."),
        "epochs": a.epochs,
        "trials": a.trials,
        "rows": rows,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    seed = rows["seed loop"]["neg_elbo"]
    print(f"\n{a.dataset}, {a.epochs} epochs per model; test set; nats per image")
    print("| model | test -ELBO (z sampled) | recon_at_mean | gain over the seed loop | wall time |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['neg_elbo']:.2f} | {r['recon_at_mean']:.2f} | {seed - r['neg_elbo']:+.2f} "
            f"| {r['seconds']:.0f} s |"
        )
    print(f"tuned best: {rows['vae tune best']['best_params']}")


if __name__ == "__main__":
    main()
