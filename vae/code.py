"""The code a model was made by, as part of its identity: a fix to the loss must make the next night train
and register anew, not reuse a cached training or call the candidate "already registered".

code_version() hashes the vae package's own sources (every .py file under it, by path and content): it
changes with any edit, committed or not, and is the same on every machine running the same code. A git
commit would miss uncommitted edits and is absent from an installed wheel, so it is kept beside the hash as a
tag for people (code_commit()), not used as the key. Standard library only: flows/ import it for the cache."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def code_version(package: Path = PACKAGE) -> str:
    """12 hex digits of a sha256 over the package's .py files (relative path, then content), sorted."""
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def code_commit(package: Path = PACKAGE) -> str:
    """The git commit the package's checkout is at, with "-dirty" when its vae/ files differ from it;
    "none" outside a git checkout (an installed package) or without git."""
    try:
        run = dict(cwd=package, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "none"
    return commit + ("-dirty" if dirty else "")
