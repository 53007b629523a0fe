"""How close the importance-weighted NLL (`vae evaluate --iw-samples K`) runs to its compute floor on this CPU.

    python benchmarks/iw_speed.py [--images 1000] [--k 1000] [--reps 3] [--json FILE]

The floor is the decoder's matrix products for K samples of every image (2 * (L*H + H*784) FLOP per
sample, the seed's 20-400-784) at the float32 matmul peak measured in the same run. Two paths over the
same images, seed and draws, alternated: the folded one (losses._log_px_z: x . logits as one small matmul
per batch, one softplus pass over the logits) and the reference that scores every pixel with recon_bce.
The seed's model at its initial weights: the work does not depend on the weights. Test images of the
official MNIST files in ../shared when present, else mnist-5k's test split.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared" / "data" / "mnist"


def main() -> None:
    import torch
    from train_speed import matmul_peak

    from vae.config import Config, DataConfig, ModelConfig
    from vae.data import load
    from vae.evaluation import iw_nll
    from vae.losses import iw_log_likelihood
    from vae.models import build_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    dataset = f"idx:{SHARED}" if SHARED.is_dir() else "mnist-5k"
    images = load(DataConfig(dataset=dataset)).test.images[: a.images]
    cfg = Config()
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    mc = cfg.model
    flop = 2 * a.k * len(images) * (mc.latent * mc.hidden[0] + mc.hidden[0] * 784)
    peak = matmul_peak()
    import vae.evaluation

    paths = {"folded": True, "reference": False}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    nll: dict[str, float] = {}
    for _ in range(a.reps):
        for name, fold in paths.items():
            vae.evaluation.iw_log_likelihood = functools.partial(iw_log_likelihood, fold=fold)  # iw_nll's estimator
            t0 = time.perf_counter()
            nll[name] = iw_nll(model, images, cfg, a.k)
            seconds[name].append(time.perf_counter() - t0)
    floor = flop / peak / 1e9
    best = {name: min(s) for name, s in seconds.items()}
    result = {
        "dataset": "mnist" if SHARED.is_dir() else "mnist-5k",
        "images": len(images),
        "k": a.k,
        "matmul_peak_gflops": peak,
        "floor_s": floor,
        "seconds": seconds,
        "best_s": best,
        "times_floor": {name: b / floor for name, b in best.items()},
        "iw_nll": nll,
        "speedup": best["reference"] / best["folded"],
    }
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul peak {peak:.0f} GFLOP/s; floor {floor:.2f} s for K={a.k} on {len(images)} images")
    for name in paths:
        print(
            f"{name:9s} best {best[name]:.2f} s (median {statistics.median(seconds[name]):.2f}), "
            f"{best[name] / floor:.2f}x the floor, IW-NLL {nll[name]:.4f}"
        )
    print(f"folded / reference: {result['speedup']:.2f}x faster")


if __name__ == "__main__":
    main()
