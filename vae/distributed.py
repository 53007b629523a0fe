"""Process-group setup and teardown from the torchrun environment, in one place.

One process per GPU (NCCL) or per CPU slot (gloo). Without torchrun's variables this is a plain
single process and nothing is initialised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vae.errors import ConfigError
from vae.lifetime import ANY_PARENT, PARENT_ENV, end_tree, tied_to_this_process


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' is invalid: no CUDA device is visible; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def check_nproc(nproc: int, device: str) -> None:
    """ConfigError for a process count this machine cannot run: NCCL wants one process per GPU."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc={nproc} is invalid: expected an integer >= 1")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device in ("cuda", "auto") and gpus and nproc > gpus:
        raise ConfigError(
            f"nproc={nproc} is invalid with {gpus} visible CUDA device(s): NCCL runs one process per "
            f"GPU; use --nproc {gpus} (or --device cpu for gloo processes)"
        )


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """`with distributed() as ctx:` joins torchrun's process group when there is one, and always leaves it
    cleanly: a barrier before destroy_process_group (without it rank 0 aborted in 2 of 16 runs here)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dist.is_initialized():  # the caller (e.g. a tuning worker) owns the group across several fits
        yield DistContext(dist.get_rank(), local_rank, dist.get_world_size(), dev)
        return
    if world == 1:
        yield DistContext(0, 0, 1, dev)
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    ok = False
    try:
        yield DistContext(rank, local_rank, world, dev)
        ok = True
    finally:
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's value of a small picklable object, on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def torchrun(
    module_args: Sequence[str], nproc: int, extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> int:
    """Run `python -m <module_args>` under torchrun on this machine (standalone rendezvous on a free port)
    and return its exit code. Prefect tasks and `vae train --nproc N` both launch training this way:
    a subprocess, never a fork inside the caller. torchrun gets SIGTERM when this process dies, each rank
    when torchrun dies, and an interrupt here (SIGTERM turned into KeyboardInterrupt, Ctrl-C) ends the whole
    tree: torchrun's own SIGKILL-free teardown first, then SIGKILL for what is left (vae/lifetime.py)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *extra,
        "-m",
        *module_args,
    ]
    env = {**os.environ, **(env or {}), PARENT_ENV: ANY_PARENT}  # each rank's vae.cli.main ties itself to torchrun
    proc = subprocess.Popen(cmd, env=env, preexec_fn=tied_to_this_process())
    try:
        return proc.wait()
    except BaseException:
        end_tree(proc.pid, grace=30)
        raise
