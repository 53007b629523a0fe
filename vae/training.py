"""fit(): one training loop for 1 process or N DDP processes. Nothing here knows MLflow, Optuna or Prefect:
trackers and pruners come in as `callbacks(epoch, metrics)`.

Determinism: every random draw of epoch e (the permutation, eps, noise, binarization) comes from one
generator seeded with (seed, e), and every rank draws the whole global batch's worth then keeps its slice.
So N processes see the same numbers as 1 process on the same global batches, and a run resumed at an
epoch boundary continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vae import checkpoint as ckpt
from vae.batches import draw_batch, epoch_generator, shard
from vae.captured import CapturedStep
from vae.config import Config
from vae.data import Dataset, load
from vae.distributed import DistContext, all_reduce_sum, barrier, distributed
from vae.errors import CheckpointError, ConfigError, DivergedError
from vae.evaluation import elbo_metrics
from vae.models import build_model, val_key

Callback = Callable[[int, dict[str, float]], None]
log = logging.getLogger(__name__)


@dataclass
class FitResult:
    metrics: dict[str, float]  # the last epoch's train and validation metrics
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    fingerprint: str = ""
    epochs_run: int = 0  # epochs trained by this call (fewer than cfg.train.epochs after a resume)
    seconds: float = 0.0
    best_epoch: int = 0  # the epoch with the best validation loss (its state is best_checkpoint)
    best_checkpoint: Path | None = None  # out/best.pt on rank 0
    stopped_early: bool = False


def lr_at(tc, epoch: int) -> float:
    """Learning rate of an epoch. "exp" decays geometrically from lr to lr/10 over the run: a compressed
    stand-in for the IWAE paper's schedule (lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7)."""
    if tc.lr_schedule == "exp" and tc.epochs > 1:
        return tc.lr * 10 ** (-epoch / (tc.epochs - 1))
    return tc.lr


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        log.info(msg)


def _check_resume(state: dict[str, Any], cfg: Config, fingerprint: str, path: Path) -> None:
    old = Config.from_dict(state["config"])
    if old.model != cfg.model or old.data != cfg.data:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model or data config "
            f"({old.model}, {old.data}): resume with the same settings or use another --out"
        )
    if state["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was trained on data with fingerprint "
            f"{state['fingerprint'][:12]}, not {fingerprint[:12]}: the dataset changed"
        )


def fit(
    cfg: Config,
    out: str | Path | None = None,
    resume: bool = False,
    data: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train cfg's model; write out/checkpoint.pt every epoch (rank 0). Under torchrun this is one rank."""
    with distributed(cfg.train.device) as ctx:
        return _fit(cfg, Path(out) if out is not None else None, resume, data, callbacks, ctx)


@dataclass
class _Run:
    """What one fit() call trains: the model (and its DDP wrapper), the optimizer, the history so far."""

    model: torch.nn.Module
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    data: Dataset
    images: torch.Tensor  # uint8 (N, 28, 28) on the device, 47 MB for MNIST; scaled per batch
    path: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    best_epoch: int = 0  # 0: none yet
    best_value: float = math.inf
    step: CapturedStep | None = None  # --cuda-graph: full batches replay one recorded step


def _fit(
    cfg: Config, out: Path | None, resume: bool, data: Dataset | None, callbacks: Sequence[Callback], ctx: DistContext
) -> FitResult:
    t_start = time.perf_counter()
    run = _setup(cfg, out, resume, data, ctx)
    stopped_early = False
    patience = cfg.train.patience
    for epoch in range(run.start_epoch, cfg.train.epochs):
        if patience is not None and run.best_epoch and epoch - run.best_epoch >= patience:  # also on a resume
            stopped_early = True
            _log(ctx, f"early stop after epoch {epoch}: no better validation loss for {patience} epoch(s)")
            break
        loss, rec, kl, seconds = _train_epoch(run, cfg, epoch, ctx)
        if not math.isfinite(loss):
            raise DivergedError(
                f"training diverged at epoch {epoch + 1}: the loss is {loss}; the last good "
                f"checkpoint ({run.path or 'none written'}) is kept. Lower --lr or set --clip-grad"
            )
        val = elbo_metrics(run.model, run.data.val.images, cfg, ctx=ctx, seed=cfg.train.seed)
        _check_finite(run, epoch, val)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss,
            "train_recon": rec,
            "train_kl": kl,
            "epoch_seconds": seconds,
            "images_per_second": run.images.shape[0] / seconds,
            **{f"val_{k}": v for k, v in val.items()},
        }
        _record(run, cfg, row, ctx)
        for cb in callbacks:
            cb(epoch + 1, row)
    best = run.path.with_name(ckpt.BEST) if run.path is not None and ctx.is_main and run.best_epoch else None
    result = FitResult(
        run.history[-1] if run.history else {},
        run.history,
        run.path if ctx.is_main else None,
        run.data.fingerprint,
        len(run.history) - run.start_epoch,
        time.perf_counter() - t_start,
        run.best_epoch,
        best,
        stopped_early,
    )
    _log(
        ctx,
        f"done: {result.epochs_run} epoch(s) in {result.seconds:.1f} s on {ctx.world_size} process(es), "
        f"{ctx.device.type}; final val -ELBO {result.metrics.get('val_neg_elbo', float('nan')):.2f} nats, best "
        f"at epoch {run.best_epoch}" + (f"; checkpoint {run.path}" if run.path is not None else ""),
    )
    return result


def _check_finite(run: _Run, epoch: int, val: dict[str, float]) -> None:
    """Before the epoch is recorded: a finite epoch-mean loss can hide weights that the epoch's last step
    turned non-finite, or a validation loss that is not; either would poison checkpoint.pt and --resume."""
    bad_val = sorted(k for k, v in val.items() if not math.isfinite(v))
    bad_weights = ckpt.nonfinite(run.model.state_dict())
    if bad_val or bad_weights:
        parts = [f"validation {k} is {val[k]}" for k in bad_val]
        parts += [f"non-finite weights in {', '.join(bad_weights[:3])}"] if bad_weights else []
        what = "; ".join(parts)
        raise DivergedError(
            f"training diverged at epoch {epoch + 1}: {what}; the last good checkpoint "
            f"({run.path or 'none written'}) is kept. Lower --lr or set --clip-grad"
        )


def val_loss(row: dict[str, float]) -> float:
    """The number early stopping and the best checkpoint go by: validation -ELBO (BCE for the plain AE)."""
    key = val_key(row)
    return row[key] if key else math.inf


def _record(run: _Run, cfg: Config, row: dict[str, float], ctx: DistContext) -> None:
    """The epoch's row into the history; the checkpoint (rank 0), and best.pt when validation improved."""
    run.history.append(row)
    improved = val_loss(row) < run.best_value
    if improved:
        run.best_epoch, run.best_value = int(row["epoch"]), val_loss(row)
    if ctx.is_main and run.path is not None:
        state = {
            "config": cfg.to_dict(),
            "epoch": int(row["epoch"]),
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "history": run.history,
            "best": {"epoch": run.best_epoch, "value": run.best_value},
            "fingerprint": run.data.fingerprint,
            "dataset": run.data.name,
            "torch": str(torch.__version__),
        }
        if improved:  # written first: a kill between the two leaves best.pt ahead, never behind, the history
            ckpt.save(state, run.path.with_name(ckpt.BEST))
        ckpt.save(state, run.path)
    _log(ctx, _format_row(row, cfg.train.epochs))


def _setup(cfg: Config, out: Path | None, resume: bool, data: Dataset | None, ctx: DistContext) -> _Run:
    """Data, model, optimizer, and the state of the checkpoint being resumed, if any."""
    tc, dev = cfg.train, ctx.device
    path = out / ckpt.FILENAME if out is not None else None
    if path is not None and path.exists() and not resume:
        raise CheckpointError(f"{path} already exists: pass --resume to continue that run, or choose another --out")
    if data is None:  # rank 0 downloads if needed; the others read the verified cache afterwards
        data = load(cfg.data, download=True) if ctx.is_main else None
        barrier(ctx)
        data = data or load(cfg.data, download=False)
    torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg.model).to(dev)
    graphed = _graphed(tc, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=dev.type in ("cpu", "cuda"))
    history, start_epoch = [], 0
    if resume and path is not None and path.exists():
        state = ckpt.load(path, map_location=dev)
        _check_resume(state, cfg, data.fingerprint, path)
        if bad := ckpt.nonfinite(state["model"]):
            raise CheckpointError(
                f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}): it cannot be resumed; "
                "train again with another --out, or delete it"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        _log(ctx, f"resuming {path} at epoch {start_epoch + 1}/{tc.epochs}")
    elif resume:
        _log(ctx, f"no checkpoint in {out}: starting from scratch")
    for group in opt.param_groups:  # whatever the checkpoint was written with: this run's way of stepping
        group["capturable"] = graphed and dev.type == "cuda"
        group["lr"] = torch.tensor(float(group["lr"]), device=dev) if graphed else float(group["lr"])
    net = DDP(model, device_ids=[dev] if dev.type == "cuda" else None) if ctx.is_distributed else model
    run = _Run(model, net, opt, data, data.train.images.to(dev), path, history, start_epoch)
    if graphed:
        run.step = CapturedStep(
            lambda x, inp, eps, set_to_none: _step(run, cfg, ctx, x, inp, eps, x.shape[0], set_to_none),
            model,
            opt,
            capture=dev.type == "cuda",
        )
    for row in history:  # the best epoch so far, from the history (checkpoints older than best.pt lack "best")
        if val_loss(row) < run.best_value:
            run.best_epoch, run.best_value = int(row["epoch"]), val_loss(row)
    return run


def _graphed(tc, ctx: DistContext) -> bool:
    """Whether full batches replay a recorded step (--cuda-graph): one CUDA process. With --device auto on a
    machine without CUDA the run goes on without a graph (same numbers, said in the log)."""
    if not tc.cuda_graph:
        return False
    if ctx.is_distributed:
        raise ConfigError("--cuda-graph records the step of one process: drop --nproc, or --cuda-graph")
    if ctx.device.type != "cuda":
        log.warning("--cuda-graph: no CUDA device, so the steps run without a graph")
    return True


def _set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    for group in opt.param_groups:  # a tensor under --cuda-graph: the graph reads it where it is
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def _train_epoch(run: _Run, cfg: Config, epoch: int, ctx: DistContext) -> tuple[float, float, float, float]:
    """One pass over the training images; returns the mean loss, recon and kl per image and the seconds.
    Nothing in the loop waits for the device: the sums stay on it until the epoch ends."""
    tc, dev = cfg.train, ctx.device
    t0 = time.perf_counter()
    run.net.train()
    gen = epoch_generator(tc.seed, epoch, dev)
    _set_lr(run.opt, lr_at(tc, epoch))  # a function of the epoch, so a resumed run gets the same rate
    n, bs = run.images.shape[0], tc.batch_size
    steps = math.ceil(n / bs)
    perm = torch.randperm(n, generator=gen, device=dev)
    sums = torch.zeros(4, device=dev)  # loss, recon, kl, images
    images = 0
    show_bar = ctx.is_main and tc.progress and sys.stderr.isatty()
    with tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, file=sys.stderr, disable=not show_bar
    ) as bar:
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            gb = idx.shape[0]
            x, inp, eps = draw_batch(run.images, idx, gen, cfg, run.model.is_variational, shard(gb, ctx))
            if run.step is not None:
                sums[:3] += run.step(x, inp, eps)
            else:
                sums[:3] += _step(run, cfg, ctx, x, inp, eps, gb, True)
            images += x.shape[0]
            bar.update(1)
    sums[3] = images
    all_reduce_sum(sums, ctx)
    loss, rec, kl_mean = (sums[:3] / sums[3]).tolist()
    return loss, rec, kl_mean, time.perf_counter() - t0


def _step(
    run: _Run,
    cfg: Config,
    ctx: DistContext,
    x: torch.Tensor,
    inp: torch.Tensor,
    eps: torch.Tensor | None,
    gb: int,
    set_to_none: bool,
) -> torch.Tensor:
    """Forward, loss, backward, clip, Adam on one batch; returns (loss sum, recon sum, kl sum) on the device."""
    tc = cfg.train
    bf16 = tc.bf16 and ctx.device.type == "cuda"
    # A recorded step cannot use autocast's cache of cast weights (the weights change between replays).
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=run.step is None):
        o = run.net(inp, eps=eps)
    loss_sum, recon, kl = run.model.objective(o, x, eps, tc)  # the model owns its loss
    # DDP averages gradients over ranks; scaling by world/global-batch makes the update that of the mean over
    # the global batch, however unevenly its last batch splits.
    run.opt.zero_grad(set_to_none=set_to_none)
    (loss_sum * (ctx.world_size / gb)).backward()
    if tc.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.clip_grad)
    run.opt.step()
    return torch.stack([loss_sum.detach(), recon.sum().detach(), kl.sum().detach()])


def _format_row(row: dict[str, float], epochs: int) -> str:
    key = val_key(row)
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.2f}  val "
        f"{'-ELBO' if key == 'val_neg_elbo' else 'BCE'} {row[key]:.2f} nats  "
        f"{row['epoch_seconds']:.1f} s ({row['images_per_second']:.0f} img/s)"
    )
