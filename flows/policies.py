"""The pipeline's task policies: what is cached, and what is retried on which failures (flows/pipeline.py).
Fetching, registering and promoting retry with backoff on errors that may be transient, never on bad input;
tuning and training retry, resuming their work, when their subprocess failed after it started."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import exponential_backoff

from vae.code import code_version
from vae.errors import ResumableError, VAEError
from vae.night.params import PipelineParams
from vae.night.store_key import store_key


# The night's run id is no part of a cache key: a later night reuses the training and takes its run under itself.
# The results are typed records of JSON values (vae/records.py): stored as JSON, readable by people and by any
# later version of the code, not as pickles (which a changed class breaks, and which run code when loaded).
@dataclass
class CodeVersion(CachePolicy):
    """The vae package's code (vae/code.py) as part of a cache key: the task bodies are one-line wrappers, so
    TASK_SOURCE alone reuses a training made by code since fixed."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        return code_version()


@dataclass
class TrackingStore(CachePolicy):
    """The MLflow store the night writes to (vae/night/store_key.py) as part of a cache key: a cached training
    names runs of that store, so after mlruns/ is wiped the next night trains again instead of registering a
    run that no longer exists (which would fail every night until the cache expired)."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        p = inputs.get("p")
        return store_key(p) if isinstance(p, PipelineParams) else None


CACHED = dict(
    cache_policy=(INPUTS - "night_id") + TASK_SOURCE + CodeVersion() + TrackingStore(),
    persist_result=True,
    result_serializer="json",
    cache_expiration=timedelta(days=30),
)


def _transient(task, task_run, state) -> bool:
    """Retry a registry step unless it failed on bad input (ConfigError and the like: retrying cannot help)."""
    try:
        state.result()
    except VAEError:
        return False
    except Exception:
        return True
    return False


def _resumable(task, task_run, state) -> bool:
    """Retry tuning and training when their subprocess failed after it started (not on bad input, nor after its
    task_timeout): the study and the checkpoint are where it left them, so the retry resumes the work."""
    try:
        state.result()
    except ResumableError:
        return True
    except Exception:
        return False
    return False


# an outage of the tracking server or the database of some minutes: the second retry starts 6 minutes after
RESUMED = dict(retries=2, retry_delay_seconds=[60, 300], retry_condition_fn=_resumable)
RETRIED = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_transient)
