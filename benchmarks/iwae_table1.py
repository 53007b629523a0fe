"""Issue 6, part 2: the one-stochastic-layer rows of Burda, Grosse & Salakhutdinov (2015), Table 1.

    python benchmarks/iwae_table1.py --objective elbo --epochs 30 --out runs/iwae-table1-vae
    python benchmarks/iwae_table1.py --objective iwae --k 50 --epochs 30 --out runs/iwae-table1-iwae50
    (rerun the same command to continue from the last checkpoint; --epochs N extends the run)
    python benchmarks/iwae_table1.py --objective iwae --k 50 --epochs 1060 --init runs/iwae-table1-vae/checkpoint.pt \
        --out runs/iwae-table1-iwae50-warm   (k=50 from the VAE row's weights at its last epoch: a warm start)

The paper's setting: dynamically binarized MNIST (60,000 training images; here 55,000 + 5,000 validation),
encoder 784-200-200-50 with tanh, decoder 50-200-200-784, Bernoulli likelihood, Adam (beta1 0.9, beta2
0.999), batch 20, learning rate 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3,280 epochs), test NLL estimated
with 5,000 importance samples on a binarization of the test set. Reported: VAE (k=1) 86.76 nats, IWAE (k=50)
84.78. Here: the same model and objectives, `--lr-schedule exp` (lr/10 by the last epoch) as the documented
substitute for the 3,280-epoch schedule, and as many epochs as the machine allows; the estimator is
the project's own (vae.evaluation.iw_nll, batched).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vae.config import Config, DataConfig, ModelConfig, TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PAPER = {("elbo", 1): 86.76, ("iwae", 50): 84.78}  # Table 1, one stochastic layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=f"idx:{SHARED}" if SHARED.exists() else "mnist")
    p.add_argument("--objective", default="elbo", choices=["elbo", "iwae"])
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-images", type=int, help="score only the first N test images (default: all)")
    p.add_argument(
        "--init",
        help="start a new --out from this checkpoint (weights, Adam state, epoch count) "
        "instead of from scratch: a warm start, reported as such",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--json")
    a = p.parse_args()

    import shutil

    import torch

    from vae.checkpoint import load_model
    from vae.data import load
    from vae.evaluation import elbo_metrics, iw_nll
    from vae.training import fit

    cfg = Config(
        DataConfig(dataset=a.dataset, binarize="dynamic"),
        ModelConfig(kind="vae", latent=50, hidden=(200, 200), activation="tanh"),
        TrainConfig(
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=1e-3,
            lr_schedule="exp",
            objective=a.objective,
            k=a.k,
            progress=False,
        ),
    )
    init_epoch = 0
    if a.init:
        if not Path(a.init).is_file():
            raise SystemExit(f"--init {a.init} is not a file: expected a checkpoint.pt of a run of this model")
        init_epoch = int(torch.load(a.init, map_location="cpu", weights_only=False)["epoch"])
        ckpt = Path(a.out) / "checkpoint.pt"
        if not ckpt.exists():  # copied whole or not at all; a rerun continues from --out
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(a.init, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
    data = load(cfg.data)
    t0 = time.time()
    fit(cfg, out=a.out, resume=True, data=data)
    train_seconds = time.time() - t0
    model, cfg, state = load_model(a.out)
    test = data.test.images[: a.eval_images] if a.eval_images else data.test.images
    t0 = time.time()
    nll = iw_nll(model, test, cfg, a.eval_k)
    eval_seconds = time.time() - t0
    elbo = elbo_metrics(model, test, cfg)["neg_elbo"]
    paper = PAPER.get((a.objective, a.k))
    own = [h for h in state["history"] if h["epoch"] > init_epoch]
    row = {
        "objective": a.objective,
        "k": a.k,
        "epochs": state["epoch"],
        "batch_size": a.batch_size,
        "init": {"from": a.init, "epoch": init_epoch} if a.init else None,
        "own_epochs": len(own),
        "test_iw_nll": nll,
        "eval_k": a.eval_k,
        "test_images": int(test.shape[0]),
        "test_neg_elbo": elbo,
        "paper": paper,
        "gap": None if paper is None else nll - paper,
        "train_seconds_this_call": train_seconds,
        "train_seconds_total": sum(h["epoch_seconds"] for h in state["history"]),
        "train_seconds_own": sum(h["epoch_seconds"] for h in own),
        "eval_seconds": eval_seconds,
    }
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=2) + "\n")
    print(f"| objective | k | epochs | test NLL (K={a.eval_k}) | test -ELBO | paper | gap | training time |")
    print("|---|---|---|---|---|---|---|---|")
    epochs = f"{init_epoch} (init) + {len(own)}" if a.init else str(row["epochs"])
    print(
        f"| {a.objective} | {a.k} | {epochs} | {nll:.2f} | {elbo:.2f} | {paper or '-'} | "
        f"{'-' if paper is None else format(row['gap'], '+.2f')} | {row['train_seconds_total'] / 60:.1f} min |"
    )


if __name__ == "__main__":
    main()
