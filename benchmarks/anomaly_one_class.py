"""One-class anomaly detection: train a VAE on a single digit, score the whole test split, and measure how
well the score separates that digit from each held-out digit (AUROC, 0.5 = chance, 1 = perfect).

    python benchmarks/anomaly_one_class.py [--dataset idx:../shared/data/mnist] [--epochs 10] [--json FILE]

Default data: the official MNIST files in ../shared/data/mnist when present, else the embedded mnist-5k.
Each normal digit gets its own model (the seed's 784-400-20 VAE, its training images of that digit only,
the given epochs, seed 0). Scores: -ELBO (16 posterior samples, nats/image) and the reconstruction
cross-entropy decoding z = mu. Printed last: a table, rows = the digit trained on, columns = the held-out
digit, with each row's AUROC against all other digits under both scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mnist"


def run(dataset: str, epochs: int, digits: list[int], device: str, seed: int, tmp: Path) -> dict:
    import numpy as np

    from vae import uses
    from vae.checkpoint import load_model
    from vae.config import Config, DataConfig, TrainConfig
    from vae.data import load
    from vae.distributed import pick_device
    from vae.training import fit

    data = load(DataConfig(dataset), download=False)
    x = data.test.images.reshape(-1, 784).numpy().astype(np.float32) / 255
    labels = data.test.labels.numpy()
    rows = []
    for d in digits:
        one = uses.one_class(data, (d,))
        cfg = Config(
            data=DataConfig(dataset), train=TrainConfig(epochs=epochs, seed=seed, device=device, progress=False)
        )
        t0 = time.perf_counter()
        result = fit(cfg, out=tmp / f"digit-{d}", data=one)
        train_s = time.perf_counter() - t0
        model = load_model(result.checkpoint, map_location=pick_device(device))[0]
        row = {
            "digit": d,
            "train_images": len(one.train.labels),
            "train_seconds": round(train_s, 1),
            "val_neg_elbo": round(result.metrics["val_neg_elbo"], 2),
        }
        for kind in ("neg-elbo", "recon"):
            s = uses.scores(model, x, kind)
            row[f"auroc_{kind}"] = uses.auroc(s, labels != d)
            row[f"per_class_{kind}"] = uses.per_class_auroc(s, labels, (d,))
        rows.append(row)
        print(
            f"digit {d}: {row['train_images']} images, {train_s:.1f} s, AUROC -ELBO {row['auroc_neg-elbo']:.4f}, "
            f"recon {row['auroc_recon']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "dataset": data.name,
        "fingerprint": data.fingerprint,
        "test_images": len(labels),
        "epochs": epochs,
        "seed": seed,
        "rows": rows,
        "mean_auroc_neg_elbo": statistics.mean(r["auroc_neg-elbo"] for r in rows),
        "mean_auroc_recon": statistics.mean(r["auroc_recon"] for r in rows),
    }


def table(res: dict) -> str:
    digits = list(range(10))
    head = "| trained on | " + " | ".join(str(c) for c in digits) + " | all others (-ELBO) | all others (recon) |"
    lines = [head, "|" + " --- |" * (len(digits) + 3)]
    for r in res["rows"]:
        cells = ["-" if c == r["digit"] else f"{r['per_class_neg-elbo'][c]:.3f}" for c in digits]
        overall = f" | {r['auroc_neg-elbo']:.3f} | {r['auroc_recon']:.3f} |"
        lines.append(f"| {r['digit']} | " + " | ".join(cells) + overall)
    lines.append(
        f"| mean | {' | '.join([''] * len(digits))} | {res['mean_auroc_neg_elbo']:.3f} | "
        f"{res['mean_auroc_recon']:.3f} |"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=f"idx:{SHARED}" if SHARED.is_dir() else "mnist-5k")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="normal digits to train a model for")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the ten checkpoints are not kept
        res = run(a.dataset, a.epochs, [int(d) for d in a.digits.split(",")], a.device, a.seed, Path(tmp))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    print(
        f"\nOne-class AUROC on {res['dataset']} ({res['test_images']} test images), {res['epochs']} epochs "
        "per model. Columns: the held-out digit (-ELBO score).\n"
    )
    print(table(res))


if __name__ == "__main__":
    main()
