"""A process's lifetime: tied to the pipeline process that started it, a whole process tree ended at once, and
interrupts held off while a file is half written (imported by the CLI before anything heavy: stdlib at import
time, psutil only inside end_tree)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

PARENT_ENV = "VAE_DIE_WITH_PARENT"
ANY_PARENT = "launcher"  # PARENT_ENV's value for torchrun's ranks, whose parent's pid is not known in advance


def die_with_parent() -> None:
    """Where the pipeline started this process (it sets VAE_DIE_WITH_PARENT to its pid): SIGTERM when that
    parent dies, even by SIGKILL or the OOM killer, so that no orphaned `vae train` goes on writing the run
    folder that the next night resumes. Linux (prctl PR_SET_PDEATHSIG); elsewhere a no-op. The variable is
    removed; torchrun's ranks get it anew as ANY_PARENT (vae.distributed.torchrun), tied to torchrun."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    _die_with_parent()
    gone = os.getppid() == 1 if parent == ANY_PARENT else os.getppid() != int(parent)
    if gone:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def tied_to_this_process():
    """A Popen preexec_fn for a child this code does not run (torchrun): SIGTERM to it when this process dies,
    so that it ends its ranks rather than leave them training."""
    return _die_with_parent if sys.platform.startswith("linux") else None


def end_tree(pid: int, grace: float) -> None:
    """End process `pid` and every process below it, ranks that torchrun started in sessions of their own
    included: SIGTERM to all (each may close what it has open: an MLflow run as KILLED), SIGKILL to those
    left after `grace` seconds. The tree is read before any signal, so that children whose parent dies
    first are not lost; psutil checks each process's start time, so a reused pid is never signalled."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with suppress(psutil.NoSuchProcess):
            tree.extend(c for c in p.children(recursive=True) if c not in tree)  # started meanwhile
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them as they would have been acted on.

    For writes that must not be cut: torch.save interrupted by a KeyboardInterrupt raises a second error from
    its zip writer's cleanup, so the interrupt turned into a failure (exit 1, a FAILED run, not KILLED).
    Python handlers run in the main thread only, so elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in caught[:1]:  # re-raise the first; the rest repeat it
            signal.raise_signal(signum)
