"""`vae ...`: parse arguments, build a config, call the library. Heavy imports happen inside commands so
that `vae --help` stays quick. Input errors print one line and exit 2, before anything is written."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import ConfigError, VAEError


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths, e.g. 400 or 200,200")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist-5k",
                   help="mnist-5k (embedded, default), mnist, fashion-mnist, or idx:PATH (a folder of idx files)")
    p.add_argument("--data-dir", help="download cache (default $VAE_DATA_DIR or ~/.cache/vae)")
    p.add_argument("--mirror", help="base URL holding the official gz files (default $VAE_MNIST_MIRROR)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="Variational autoencoders on 28x28 grey images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download and inspect data sets")
    dsub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("fetch", "download and verify a data set into the cache"),
                         ("info", "split sizes, class counts and fingerprint of a data set")):
        p = dsub.add_parser(action, help=text, description=text)
        _data_args(p)
        p.add_argument("--split-seed", type=int, default=0)
        _json_arg(p)

    p = sub.add_parser("train", help="train a model (one process, or N under torchrun)",
                       description="Train a VAE/AE; writes OUT/checkpoint.pt every epoch and OUT/history.json.")
    _data_args(p)
    d, m, t = DataConfig(), ModelConfig(), TrainConfig()
    p.add_argument("--split-seed", type=int, default=d.split_seed)
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--binarize", default=d.binarize, help="none, or dynamic: fresh Bernoulli pixels every epoch")
    p.add_argument("--model", default=m.kind, help="vae (the seed's MLP), ae, or conv-vae")
    p.add_argument("--latent", type=int, default=m.latent)
    p.add_argument("--hidden", type=_hidden, default=m.hidden, help="hidden widths, e.g. 400 or 200,200")
    p.add_argument("--activation", default=m.activation, help="relu or tanh")
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="global batch, split across processes")
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--beta", type=float, default=t.beta, help="weight of the KL term")
    p.add_argument("--noise", default=t.noise, help="denoising: none, gaussian, masking or salt-pepper")
    p.add_argument("--noise-level", type=float, default=t.noise_level)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    p.add_argument("--device", default=t.device, help="auto, cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (launches torchrun)")
    p.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="plain lines even on a terminal")
    _json_arg(p)

    p = sub.add_parser("evaluate", help="test metrics and figures of a checkpoint")
    p.add_argument("checkpoint", help="a run folder or its checkpoint.pt")
    p.add_argument("--dataset", help="evaluate on another data set (default: the one it was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--mirror")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=0, help="K for the importance-weighted NLL (0: skip)")
    p.add_argument("--figures", help="folder for the PNG figures (default: <run folder>/figures)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--device", default="auto")
    _json_arg(p)

    p = sub.add_parser("sample", help="new images from the prior")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="grid.png, or samples.npy for (N, 28, 28) float pixels")
    return parser


def _config_from_args(a: argparse.Namespace) -> Config:
    return Config(
        DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed, a.subset, a.binarize),
        ModelConfig(a.model, a.latent, a.hidden, a.activation),
        TrainConfig(a.epochs, a.batch_size, a.lr, a.beta, a.noise, a.noise_level, a.seed, a.clip_grad,
                    a.device, a.bf16, not a.no_progress),
    )


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def cmd_train(a: argparse.Namespace) -> dict[str, Any]:
    cfg = _config_from_args(a)
    if a.nproc < 1:
        raise ConfigError(f"nproc={a.nproc} is invalid: expected an integer >= 1")
    out = Path(a.out or f"runs/{cfg.model.kind}-{cfg.data.dataset.replace(':', '_').replace('/', '_')}"
                         f"-{time.strftime('%Y%m%d-%H%M%S')}")
    if a.nproc > 1 and not _under_torchrun():
        # Check everything that can be wrong here, so bad input fails in one line before torchrun starts.
        from vae.checkpoint import FILENAME
        from vae.data import load
        if (out / FILENAME).exists() and not a.resume:
            raise ConfigError(f"{out / FILENAME} already exists: pass --resume to continue, or choose another --out")
        load(cfg.data, download=True)
        from vae.distributed import torchrun
        argv = _drop_option(list(a.argv), "--nproc")
        if a.out is None:
            argv += ["--out", str(out)]
        code = torchrun(["vae", *argv], a.nproc)
        raise SystemExit(code)
    from vae import train
    result = train(cfg, out=out, resume=a.resume)
    summary = {"out": str(out), "checkpoint": str(result.checkpoint) if result.checkpoint else None,
               "fingerprint": result.fingerprint, "epochs_run": result.epochs_run,
               "seconds": round(result.seconds, 3), "metrics": result.metrics, "config": cfg.to_dict()}
    if result.checkpoint is not None:
        from vae.evaluation import write_json
        write_json({**summary, "history": result.history}, out / "history.json")
    return summary


def _drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == name:
            skip = True
        elif not x.startswith(name + "="):
            out.append(x)
    return out


def cmd_evaluate(a: argparse.Namespace) -> dict[str, Any]:
    from vae import evaluate
    from vae.checkpoint import checkpoint_path
    if a.iw_samples < 0:
        raise ConfigError(f"iw-samples={a.iw_samples} is invalid: expected an integer >= 0")
    figures = None if a.no_figures else (a.figures or checkpoint_path(a.checkpoint).parent / "figures")
    return evaluate(a.checkpoint, dataset=a.dataset, split=a.split, iw_samples=a.iw_samples,
                    figures_dir=figures, data_dir=a.data_dir, mirror=a.mirror, device=a.device)


def cmd_sample(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out)
    if a.n < 1:
        raise ConfigError(f"n={a.n} is invalid: expected an integer >= 1")
    if not a.temperature > 0:
        raise ConfigError(f"temperature={a.temperature} is invalid: expected a number > 0")
    if out.suffix not in (".png", ".npy"):
        raise ConfigError(f"--out {out} is invalid: expected a .png (image grid) or .npy (array) file name")
    if not out.parent.exists():
        raise ConfigError(f"--out {out} is invalid: folder {out.parent} does not exist")
    import torch

    from vae.checkpoint import load_model
    model, _, _ = load_model(a.checkpoint)
    if not model.is_variational:
        raise ConfigError(f"{a.checkpoint} holds a plain autoencoder, which has no prior to sample from")
    images = model.sample(a.n, a.temperature, generator=torch.Generator().manual_seed(a.seed))
    if out.suffix == ".npy":
        import numpy as np
        np.save(out, images.reshape(-1, 28, 28).numpy())
    else:
        from vae.figures import _grid
        _grid(images, out, nrow=8)
    return {"out": str(out), "n": a.n, "temperature": a.temperature}


def cmd_data(a: argparse.Namespace) -> dict[str, Any]:
    from vae import data
    cfg = DataConfig(a.dataset, a.data_dir, a.mirror, a.split_seed)
    if a.action == "fetch":
        folder = data.fetch(cfg.dataset, cfg.data_dir, cfg.mirror)
        return {**data.info(cfg), "fetched": str(folder) if folder else None}
    return data.info(cfg)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv  # re-used verbatim when `train --nproc N` relaunches itself under torchrun
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "data": cmd_data}
    try:
        result = commands[a.command](a)
    except VAEError as e:
        print(f"vae: error: {e}", file=sys.stderr)
        return 2
    if getattr(a, "json", False):
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result, default=str))
    else:
        _print_human(a.command, result)
    return 0


def _print_human(command: str, result: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if command == "train":
        print(f"run folder: {result['out']}")
        return
    for k, v in result.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, dict):
            v = json.dumps(v)
        print(f"{k:>16}: {v}")
