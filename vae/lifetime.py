"""A process's lifetime: tied to the pipeline process that started it, and interrupts held off while a file
is half written (stdlib only: imported by the CLI before anything heavy)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PARENT_ENV = "VAE_DIE_WITH_PARENT"


def die_with_parent() -> None:
    """Where the pipeline started this process (it sets VAE_DIE_WITH_PARENT to its pid): SIGTERM when that
    parent dies, even by SIGKILL or the OOM killer, so that no orphaned `vae train` goes on writing the run
    folder that the next night resumes. Linux (prctl PR_SET_PDEATHSIG); elsewhere a no-op. The variable is
    removed, so torchrun's workers, whose parent is torchrun, are not tied to the night."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


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
