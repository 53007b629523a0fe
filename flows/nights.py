"""Guardrails of unattended nights that need Prefect: one night per work folder, and a record of every night
that failed or died, in MLflow (a small run in the model's experiment, tag `nightly.case` = failed/crashed)
and in Prefect (a Markdown artifact `vae-night-failure` on the flow run, whose state says Failed/Crashed).

- A night raising an exception: Prefect marks it Failed and runs the flow's `on_failure` hook (`record_failure`).
- A night whose process is killed inside a served/worker deployment: the runner marks it Crashed and runs the
  `on_crashed` hook (`record_failure`, in the runner's process).
- A night whose process is killed with nothing watching it (`python -m flows.pipeline` under cron, SIGKILL,
  a lost machine): nobody can run a hook. Its lock file in the work folder names its flow run and process;
  the next night finds the process gone, marks that flow run Crashed in Prefect with the reason, records it,
  and then resumes its work (the study and the training checkpoint continue where they stopped).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.states import Crashed

from vae.errors import VAEError
from vae.night import steps
from vae.night.params import PipelineParams
from vae.stores import file_lock, holder, holder_alive

LOCK = "night.lock"
FAILURE_KEY = "vae-night-failure"
# What each failed night of this process raised, by flow run id. Prefect's Failed state does not always carry
# it: a sign-off pause that timed out is failed by the server, whose message is "The flow was failed and never
# resumed.", and the night's own reason (SignOffTimeout naming the version and the command) would be lost.
RAISED: dict[str, str] = {}


class NightBusy(VAEError):
    """Another night is running on the same work folder."""

    exit_code = 1


def _stale(old: dict, p: PipelineParams) -> bool:
    """The night named in a lock file is over: its process is gone (or its pid now names another process), or
    (another host) it outlived any night."""
    if old.get("host") == socket.gethostname():
        return not holder_alive(old)
    return time.time() - old.get("since", 0) > 2 * p.task_timeout + 3600


def private_results() -> Path:
    """Prefect's result folder made 0700: the cached records hold the store URLs the later steps connect with,
    which may carry a password (they are JSON, and no other local user lists or reads the folder)."""
    folder = Path(PREFECT_LOCAL_STORAGE_PATH.value()).expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


@contextmanager
def night_lock(p: PipelineParams, log):
    """Hold the work folder's night lock for the flow run; a crashed night's lock is taken over (and that
    night recorded as crashed); a live one refuses this night with NightBusy."""
    private_results()
    path = Path(p.workdir) / LOCK
    me = {**holder(), "flow_run_id": str(current_run.id), "since": time.time()}
    crashed = None
    with file_lock(path.with_name(LOCK + ".guard")):
        if path.exists():
            old = json.loads(path.read_text() or "{}")
            if not _stale(old, p):
                raise NightBusy(
                    f"another night is running on {p.workdir}: flow run {old.get('flow_run_id')} (pid "
                    f"{old.get('pid')} on {old.get('host')}, since {time.ctime(old.get('since', 0))})"
                )
            crashed = old
        path.write_text(json.dumps(me))
    try:
        if crashed:
            _record_crashed(p, crashed, log)
        yield
    except Exception as e:  # for record_failure, which may be handed the server's message instead of this one
        RAISED[me["flow_run_id"]] = f"{type(e).__name__}: {e}"
        raise
    finally:
        with file_lock(path.with_name(LOCK + ".guard")):
            if path.exists() and json.loads(path.read_text() or "{}").get("flow_run_id") == me["flow_run_id"]:
                path.unlink()


def failure_artifact(client, flow_run_id, markdown: str) -> None:
    client.create_artifact(
        ArtifactCreate(
            type="markdown",
            key=FAILURE_KEY,
            description="a night that failed or died",
            flow_run_id=flow_run_id,
            data=markdown,
        )
    )


def _record_crashed(p: PipelineParams, old: dict, log) -> None:
    reason = (
        f"the process running this night (pid {old.get('pid')} on {old.get('host')}) died without finishing; "
        f"found by flow run {current_run.id}, which resumes its work"
    )
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(old["flow_run_id"])
        if run.state is not None and not run.state.is_final():
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            failure_artifact(client, run.id, f"# Night crashed\n\n{reason}.\n")
    steps.night_record_step(p, {"case": "crashed", "reason": reason}, {"prefect.flow_run_id": old["flow_run_id"]}, True)
    log(f"the last night (flow run {old['flow_run_id']}) crashed: recorded in Prefect and MLflow; resuming its work")


def drill(step: str) -> None:
    """Fault injection at the night's stage boundaries (fetch, tune, candidate, evaluate, register, gate), for
    recovery drills, tests and the fault matrix (benchmarks/faults.py):
    - VAE_PIPELINE_FAIL_AFTER=<step> raises right after the step;
    - VAE_PIPELINE_HOLD_AT=<step> with VAE_PIPELINE_HOLD_FILE=<path> writes the night's pid to that file and
      stops the process (SIGSTOP) right after the step: whoever drills injects a fault at that exact point,
      then sends SIGCONT (the night goes on) or SIGKILL."""
    if os.environ.get("VAE_PIPELINE_FAIL_AFTER") == step:
        raise RuntimeError(f"injected failure after {step} (VAE_PIPELINE_FAIL_AFTER)")
    if os.environ.get("VAE_PIPELINE_HOLD_AT") == step and os.environ.get("VAE_PIPELINE_HOLD_FILE"):
        hold = Path(os.environ["VAE_PIPELINE_HOLD_FILE"])
        hold.with_suffix(".tmp").write_text(str(os.getpid()))
        hold.with_suffix(".tmp").replace(hold)  # whole or absent: the driller never reads a half-written pid
        os.kill(os.getpid(), signal.SIGSTOP)


def record_failure(flow, flow_run, state) -> None:
    """on_failure / on_crashed hook: the failed night in MLflow and as a Prefect artifact on its run."""
    case = "crashed" if state.is_crashed() else "failed"
    reason = RAISED.pop(str(flow_run.id), None) or state.message or state.name
    names = {f.name for f in fields(PipelineParams)}
    try:
        p = PipelineParams(**{k: v for k, v in (flow_run.parameters or {}).items() if k in names})
    except VAEError:
        return  # bad parameters: the flow failed before any work, and says why in its state
    lock = Path(p.workdir) / LOCK
    if lock.exists() and json.loads(lock.read_text() or "{}").get("flow_run_id") == str(flow_run.id):
        lock.unlink()  # recorded here: the next night need not record it again
    with get_client(sync_client=True) as client:
        failure_artifact(client, flow_run.id, f"# Night {case}\n\n{reason}\n\nThe next night resumes what was left.\n")
    try:
        steps.night_record_step(p, {"case": case, "reason": reason}, {"prefect.flow_run_id": flow_run.id}, True)
    except Exception as e:  # the store itself may be what failed: the Prefect state and artifact still say it
        print(f"could not record the failed night in MLflow: {type(e).__name__}: {e}")
