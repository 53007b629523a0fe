"""Per-epoch metrics delivered to MLflow by a thread of their own, so that training never waits on the tracking
server and an outage of minutes loses nothing: the metrics wait, in order, and go when it answers again.

What is waiting is also kept in OUT/undelivered_metrics.json (written atomically as it changes, removed once
empty): a run killed during an outage, or one whose server did not come back in time, leaves them there, and
the next `--resume` of that run sends them first. `VAE_TRACKING_OUTAGE_SECONDS` (default 900) is how long the
end of a run waits for the server before it gives up on them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

SPOOL = "undelivered_metrics.json"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
log = logging.getLogger(__name__)


def outage_seconds() -> float:
    return float(os.environ.get("VAE_TRACKING_OUTAGE_SECONDS", "900"))


class Outbox:
    def __init__(self, client: MlflowClient, run_id: str, folder: Path) -> None:
        self.client, self.run_id, self.spool = client, run_id, Path(folder) / SPOOL
        self._pending: list[Metric] = [Metric(**m) for m in self._spooled()]
        self._cond = threading.Condition()
        self._closed = False
        self._abandoned = False  # closed with metrics left: the spool file is theirs, the thread touches nothing
        self.outage_since: float | None = None
        self.delivered = 0
        self._thread = threading.Thread(target=self._loop, name="vae-metrics-outbox", daemon=True)
        self._thread.start()

    def _spooled(self) -> list[dict]:
        """Metrics an earlier process of this run could not deliver (its spool file), to go first."""
        try:
            known = json.loads(self.spool.read_text())
        except (OSError, ValueError):
            return []
        return known["metrics"] if known.get("run_id") == self.run_id else []

    def put(self, metrics: list[Metric]) -> None:
        with self._cond:
            self._pending.extend(metrics)
            self._write_spool()
            self._cond.notify_all()

    def _write_spool(self) -> None:  # under the lock
        if not self._pending:
            self.spool.unlink(missing_ok=True)
            return
        rows = [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self._pending]
        tmp = self.spool.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "metrics": rows}))
        os.replace(tmp, self.spool)

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                batch = self._pending[:BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # the server, its database or the network: keep them, try again
                failures += 1
                if self.outage_since is None:
                    self.outage_since = time.time()
                    log.warning(
                        "MLflow did not take the epoch's metrics (%s): training goes on; they are kept in %s "
                        "and sent when the server answers",
                        f"{type(e).__name__}: {str(e)[:200]}",
                        self.spool,
                    )
                with self._cond:
                    self._cond.wait(min(30.0, 2.0**failures))
                continue
            with self._cond:
                if self._abandoned:
                    return
                del self._pending[: len(batch)]
                self.delivered += len(batch)
                self._write_spool()
                self._cond.notify_all()
            if self.outage_since is not None:
                log.warning(
                    "MLflow answers again after %.0f s: the kept metrics are delivered", time.time() - self.outage_since
                )
                self.outage_since, failures = None, 0

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for everything put so far to be delivered; returns how many are not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 1.0))
            return len(self._pending)

    def close(self, timeout: float) -> int:
        """flush(timeout), then stop the thread; what is left stays in the spool file for a --resume."""
        left = self.flush(timeout)
        with self._cond:
            self._closed = True
            if left:
                log.warning(
                    "%d metric(s) of run %s not delivered: kept in %s for --resume", left, self.run_id, self.spool
                )
                self._abandoned = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        return left
