"""Secrets out of what is shown: a password in a URL (postgresql://user:PASSWORD@host/db, a mirror's
http://user:PASSWORD@host/) or in a key=value pair becomes ***, in log lines, tags, records and error texts.
The value itself still reaches the code that connects, through the environment (vae/child.py), never through
a command line that any local user reads in /proc/PID/cmdline."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_IN_URL = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<secret>[^@/\s]+)@")
_IN_PAIR = re.compile(r"(?i)\b(?P<key>password|passwd|pwd|token|secret)=(?P<secret>[^&\s;,'\"]+)")


def redact(text: str) -> str:
    """`text` with every password of a URL and every password=/token=/secret= value replaced by ***."""
    text = _IN_URL.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _IN_PAIR.sub(lambda m: f"{m['key']}={MASK}", text)


def redact_all(value: Any) -> Any:
    """redact() through the strings of a JSON-like value (dicts, lists, tuples); other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value
