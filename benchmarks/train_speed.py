"""The seed's own training loop against `vae train`, alternated in one run, on the same data, model and batch.

    python benchmarks/train_speed.py [--dataset idx:../shared/data/mnist] [--epochs 10] [--reps 2] [--json FILE]

Each variant runs in its own process (so start-up and peak RSS are its own); the order alternates
seed, vae, seed, vae. Reported: steady-state training images/s (median over epochs 2..E of all reps),
the ratio, achieved GFLOP/s against a float32 matmul peak measured in this run, test -ELBO (z sampled)
and recon_at_mean (z = mu, the seed's printed number) after the same epochs, and peak RSS per process.
Default data: the official MNIST files in ../shared/data/mnist when present (55k/5k/10k), else mnist-5k.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vae.child import last_json

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "mnist"
MACS_PER_IMAGE = 784 * 400 + 400 * 20 * 2 + 20 * 400 + 400 * 784  # the seed's MLP, forward
FLOP_PER_TRAIN_IMAGE = 3 * 2 * MACS_PER_IMAGE  # forward + backward (about twice the forward)


def seed_worker(dataset: str, epochs: int, seed: int, device: str = "cpu", subset: int | None = None) -> dict:
    """pytorch/examples' vae/main.py, as the seed tutorial writes it: PIL images, ToTensor, DataLoader, each
    batch moved to the device (`data.to(device)`) in the step."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from vae.config import Config, DataConfig
    from vae.data import load
    from vae.evaluation import elbo_metrics
    from vae.models import build_model

    data = load(DataConfig(dataset=dataset, subset=subset), download=False)

    class Images(torch.utils.data.Dataset):  # what torchvision.datasets.MNIST does per item
        def __init__(self, images):
            self.images, self.to_tensor = images, transforms.ToTensor()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.to_tensor(Image.fromarray(self.images[i].numpy(), mode="L")), 0

    class SeedVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x.view(-1, 784)))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    torch.manual_seed(seed)
    model = SeedVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(Images(data.train.images), batch_size=128, shuffle=True)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, _ in loader:
            x = x.to(device)
            recon, mu, logvar = model(x)
            bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            opt.zero_grad()
            (bce + kld).backward()
            opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # Score with the project's evaluator: same architecture, the seed's layers renamed.
    ours = build_model(Config().model)
    names = {"fc1": "encoder.0.0", "fc21": "fc_mu", "fc22": "fc_logvar", "fc3": "decoder.0", "fc4": "decoder.2"}
    ours.load_state_dict({f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in model.state_dict().items()})
    test = elbo_metrics(ours.to(device), data.test.images, Config(data=DataConfig(dataset=dataset)))
    return {"epoch_seconds": times, "train_images": len(data.train.images), **test}


def vae_worker(
    dataset: str,
    epochs: int,
    seed: int,
    device: str = "cpu",
    subset: int | None = None,
    bf16: bool = False,
    cuda_graph: bool = False,
) -> dict:
    import tempfile

    from vae.checkpoint import load_model
    from vae.config import Config, DataConfig, TrainConfig
    from vae.data import load
    from vae.distributed import pick_device
    from vae.evaluation import elbo_metrics
    from vae.training import fit

    cfg = Config(
        data=DataConfig(dataset=dataset, subset=subset),
        train=TrainConfig(epochs=epochs, seed=seed, progress=False, device=device, bf16=bf16, cuda_graph=cuda_graph),
    )
    data = load(cfg.data, download=False)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(cfg, out=tmp, data=data)
        model, _, _ = load_model(tmp, map_location=pick_device(device))  # "auto" is no torch device
    test = elbo_metrics(model, data.test.images, cfg)
    return {
        "epoch_seconds": [h["epoch_seconds"] for h in result.history],
        "train_images": len(data.train.images),
        **test,
    }


def matmul_peak(n: int = 2048, reps: int = 30, device: str = "cpu", dtype: str = "float32") -> float:
    """GFLOP/s of the best of `reps` n x n matrix products (float32 on the CPU; on CUDA, timed with a sync)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_worker(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--dataset", args.dataset, "--epochs", str(args.epochs)]
    cmd += ["--device", args.device] + (["--subset", str(args.subset)] if args.subset else [])
    cmd += ["--bf16"] if getattr(args, "bf16", False) else []
    cmd += ["--cuda-graph"] if getattr(args, "cuda_graph", False) else []
    return worker_result(kind, cmd)


def worker_result(kind: str, cmd: list[str], **kw) -> dict:
    """Run a benchmark worker process; its result is the JSON object on its last line of stdout."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return last_json(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=f"idx:{SHARED}" if SHARED.exists() else "mnist-5k")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--bf16", action="store_true", help="vae train with bf16 autocast (CUDA)")
    p.add_argument("--cuda-graph", action="store_true", help="vae train replaying a recorded step (CUDA)")
    p.add_argument("--worker", choices=["seed", "vae"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        extra = {"bf16": args.bf16, "cuda_graph": args.cuda_graph} if args.worker == "vae" else {}
        fn = seed_worker if args.worker == "seed" else vae_worker
        res = fn(args.dataset, args.epochs, seed=0, device=args.device, subset=args.subset, **extra)
        res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    peak = matmul_peak()
    runs: dict[str, list[dict]] = {"seed": [], "vae": []}
    for rep in range(args.reps):
        for kind in ("seed", "vae"):
            r = run_worker(kind, args)
            runs[kind].append(r)
            print(
                f"rep {rep + 1} {kind}: epochs {[round(t, 2) for t in r['epoch_seconds']]} s, "
                f"test -ELBO {r['neg_elbo']:.2f}",
                file=sys.stderr,
                flush=True,
            )

    rows = {}
    for kind, rs in runs.items():
        steady = [t for r in rs for t in (r["epoch_seconds"][1:] or r["epoch_seconds"])]
        n = rs[0]["train_images"]
        sec = statistics.median(steady)
        rows[kind] = {
            "seconds_per_epoch": sec,
            "spread": [min(steady), max(steady)],
            "images_per_second": n / sec,
            "gflops": n * FLOP_PER_TRAIN_IMAGE / sec / 1e9,
            "test_neg_elbo": statistics.median(r["neg_elbo"] for r in rs),
            "test_recon_at_mean": statistics.median(r["recon_at_mean"] for r in rs),
            "max_rss_mb": max(r["max_rss_mb"] for r in rs),
        }
    result = {
        "dataset": args.dataset.replace(str(REPO.parent), ".."),
        "train_images": runs["seed"][0]["train_images"],
        "epochs": args.epochs,
        "reps": args.reps,
        "batch_size": 128,
        "matmul_peak_gflops": peak,
        "speedup": rows["seed"]["seconds_per_epoch"] / rows["vae"]["seconds_per_epoch"],
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{result['train_images']} training images, batch 128, {args.epochs} epochs x {args.reps} reps; "
        f"matmul peak {peak:.0f} GFLOP/s"
    )
    print("| loop | s/epoch (min-max) | images/s | GFLOP/s (% of peak) | test -ELBO | recon_at_mean | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(
            f"| {'seed DataLoader loop' if kind == 'seed' else 'vae train'} | {r['seconds_per_epoch']:.2f} "
            f"({r['spread'][0]:.2f}-{r['spread'][1]:.2f}) | {r['images_per_second']:.0f} | {r['gflops']:.0f} "
            f"({100 * r['gflops'] / peak:.0f}%) | {r['test_neg_elbo']:.2f} | {r['test_recon_at_mean']:.2f} "
            f"| {r['max_rss_mb']:.0f} |"
        )
    print(f"speed-up of vae train over the seed loop: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
