"""A child process's lifetime tied to the pipeline process that started it (stdlib only: imported by the CLI
before anything heavy)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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
