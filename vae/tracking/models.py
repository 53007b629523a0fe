"""The MLflow side of using a model: the pyfunc that `mlflow models serve` answers with, logging a
checkpoint as that pyfunc, loading a model back from a registry URI, and attaching files to its run.

Logged as a pyfunc (not mlflow.pytorch's default pt2 format, which loses these methods), with an explicit
signature and explicit pip requirements (inferring them costs ~9 s). The weights travel as the run's
checkpoint file and are loaded with torch.load(weights_only=True).

Request: {"inputs": [[784 pixels in [0, 1]], ...], "params": {"op": "encode"}}; op is one of OPS:
  reconstruct -> (N, 784) pixel probabilities, decoded from z = mu
  encode      -> (N, latent) posterior means
  score       -> (N,) anomaly scores in nats/image (params: kind = auto | neg-elbo | recon, seed)
  sample      -> (n, 784) images from the prior (params: n, temperature, seed; the inputs are ignored);
                 1 <= n <= MAX_SAMPLES, decoded 1,000 at a time (vae.uses.codes.BATCH)
A bad request raises MlflowException(INVALID_PARAMETER_VALUE): the scoring server answers it with HTTP 400
and the message (any other exception would also be a 400, but with a generic message and a traceback).
`vae serve` runs that server behind vae/tracking/rest.py (a body limit, 4xx for unreadable bodies).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from vae import uses
from vae.checkpoint import checkpoint_path, is_model_uri, load_model
from vae.errors import CheckpointError, ConfigError, DataError, VAEError
from vae.tracking import rest
from vae.tracking.store import check_store, tracking_uri, using_store
from vae.uses.codes import device_of

OPS = ("reconstruct", "encode", "score", "sample")
MAX_ROWS = 65_536  # one request; larger batches belong in `vae encode` / `vae anomaly` on files
# One request's `sample`: its answer is ~16 kB of JSON an image (65 MB at the cap); more is several requests
# with other seeds, or `vae sample --n` (up to 100,000, to a file).
MAX_SAMPLES = 4_096
SEEDS = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes


class VAEPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model, self.cfg, _ = load_model(context.artifacts["checkpoint"])

    # np.ndarray: what the tensor signature delivers; a hint mlflow derives no schema from (the explicit
    # signature governs), and without any hint it prints a warning on every import.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        try:
            return predict(self.model, self.cfg, model_input, params or {})
        except VAEError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def _as_images(model_input) -> np.ndarray:
    try:
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("inputs must be numbers: expected (N, 784) pixels in [0, 1]") from None
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(len(x), 784)
    if x.ndim != 2 or x.shape[1] != 784 or not 1 <= len(x) <= MAX_ROWS:
        raise DataError(
            f"inputs of shape {x.shape} are invalid: expected (N, 784) pixels in [0, 1], 1 <= N <= {MAX_ROWS}"
        )
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError("input pixels must be numbers in [0, 1] (divide 8-bit images by 255)")
    return x


def predict(model, cfg, model_input, params: dict[str, Any]) -> np.ndarray:
    """The operations of a served model, in process; the REST server calls exactly this."""
    op = params.get("op", "reconstruct")
    if op not in OPS:
        raise ConfigError(f"op={op!r} is invalid: expected one of {', '.join(OPS)}")
    seed = _param(params, "seed", int, 0)
    if not SEEDS[0] <= seed <= SEEDS[1]:
        raise ConfigError(f"seed={seed} is invalid: expected an integer from -2**63 to 2**64 - 1")
    if op == "sample":
        return _sample(model, _param(params, "n", int, 16), _param(params, "temperature", float, 1.0), seed)
    x = _as_images(model_input)
    if op == "encode":
        return uses.encode(model, x)
    if op == "reconstruct":
        return uses.reconstruct(model, x)
    return uses.scores(model, x, str(params.get("kind", "auto")), seed=seed)


def _sample(model, n: int, temperature: float, seed: int) -> np.ndarray:
    """uses.sample's images (the same z from the same seed), decoded by uses.decode 1,000 at a time: the
    decoder's memory stays that of one batch whatever n is."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(
            f"n={n} is invalid: one request samples at most {MAX_SAMPLES} images (1 <= n <= {MAX_SAMPLES}); "
            "for more, send several requests with different seeds, or run `vae sample --n N` on the model"
        )
    if not model.is_variational or not 0 < temperature <= 10:
        return uses.sample(model, n, temperature, seed)  # refused there, with its message
    device = device_of(model)
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, model.cfg.latent, generator=g, device=device) * temperature
    return uses.decode(model, z.cpu().numpy())


def _param(params: dict[str, Any], name: str, kind: type, default):
    try:
        return kind(params.get(name, default))
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={params[name]!r} is invalid: expected a {kind.__name__}") from None


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 784))]),
        params=ParamSchema(
            [
                ParamSpec("op", "string", "reconstruct"),
                ParamSpec("n", "long", 16),
                ParamSpec("seed", "long", 0),
                ParamSpec("temperature", "double", 1.0),
                ParamSpec("kind", "string", "auto"),
            ]
        ),
    )


def pip_requirements() -> list[str]:
    return [f"{p}=={version(p)}" for p in ("torch", "numpy", "mlflow", "pillow", "tqdm")]


MODEL_CODE = Path(__file__).with_name("served_model.py")
PACKAGE = Path(__file__).resolve().parents[1]  # the `vae` package travels with the model (code_paths)


def _model_kwargs(checkpoint: str | Path) -> dict[str, Any]:
    """What log_model and save_model share: the model as code, the weights as an artifact, an explicit
    signature, an input example, explicit pip requirements (inferring them costs ~9 s)."""
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": {"checkpoint": str(checkpoint_path(checkpoint))},
        "code_paths": [str(PACKAGE)],
        "signature": signature(),
        "input_example": (np.zeros((1, 784), np.float32), {"op": "encode"}),
        "pip_requirements": pip_requirements(),
    }


def log_model(checkpoint: str | Path, name: str = "model", registered_model_name: str | None = None):
    """Log a checkpoint as a pyfunc model in the active MLflow run; returns mlflow's ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name, **_model_kwargs(checkpoint))


def save_model(checkpoint: str | Path, path: str | Path) -> Path:
    """A checkpoint as an MLflow model folder (what `vae serve RUN_FOLDER` serves), without a tracking store."""
    mlflow.pyfunc.save_model(path=str(path), **_model_kwargs(checkpoint))
    return Path(path)


def serve_env(model: str | Path) -> dict[str, str]:
    """The server's environment: this one, the model to load, and no unpickling unless the caller's environment
    asks for it (the model is code plus weights: nothing in it is a pickle)."""
    env = {**os.environ, rest.MODEL_ENV: str(model)}
    env.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    return env


def serve(model: str, host: str, port: int, tracking_uri_: str | None = None) -> int:
    """Run the REST server for MODEL (a run folder, a checkpoint, or a model URI) until it stops; returns its
    exit code. MLflow's scoring server behind vae/tracking/rest.py's guard, by uvicorn from this interpreter.
    A run folder is saved as an MLflow model in a temporary folder first."""
    if is_model_uri(model):
        uri = tracking_uri(tracking_uri_)
        check_store(uri)
        return subprocess.call(rest.command(host, port), env={**serve_env(model), "MLFLOW_TRACKING_URI": uri})
    load_model(model)  # a clear error for a missing or unreadable checkpoint, before anything starts
    with tempfile.TemporaryDirectory(prefix="vae-serve-") as tmp:
        return subprocess.call(rest.command(host, port), env=serve_env(save_model(model, Path(tmp) / "model")))


# ---------------------------------------------------------------- loading back, attaching files


def resolve_model(ref: str, tracking_uri_: str | None = None, device="cpu"):
    """(model, cfg, checkpoint dict) from a checkpoint path or an MLflow model URI: models:/NAME@ALIAS,
    models:/NAME/VERSION, runs:/RUN_ID/model. For a URI the dict gains "source": {uri, run_id,
    tracking_uri}, the run the model was logged in (where `vae report` attaches its page)."""
    if not is_model_uri(ref):
        return load_model(ref, map_location=device)
    uri = tracking_uri(tracking_uri_)
    check_store(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise
    with tempfile.TemporaryDirectory(prefix="vae-model-") as tmp:
        try:
            with using_store(uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp)
            meta = Model.load(local)
        except MlflowException as e:
            raise CheckpointError(
                f"model {ref} cannot be loaded from tracking store {uri}: {e.message.splitlines()[0][:300]}"
            ) from None
        rel = meta.flavors.get("python_function", {}).get("artifacts", {}).get("checkpoint", {}).get("path")
        if rel is None:
            raise CheckpointError(
                f"model {ref} has no checkpoint artifact: expected a model logged by vae.tracking.models.log_model"
            )
        model, cfg, state = load_model(Path(local) / rel, map_location=device)
    return model, cfg, {**state, "source": {"uri": ref, "run_id": meta.run_id, "tracking_uri": uri}}


def check_run(run_id: str, tracking_uri_: str | None = None) -> None:
    """ConfigError unless the run exists: checked before a report is computed, not after."""
    uri = tracking_uri(tracking_uri_)
    check_store(uri)
    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise ConfigError(f"run_id={run_id!r} is invalid: {e.message.splitlines()[0][:200]} in {uri}") from None


def log_files(
    run_id: str, files: list[Path], folders: list[Path], artifact_path: str, tracking_uri_: str | None = None
) -> str:
    """Attach files and folders to an existing run, under artifact_path; returns the run's artifact URI."""
    uri = tracking_uri(tracking_uri_)
    check_store(uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
        for f in files:
            client.log_artifact(run_id, str(f), artifact_path)
        for d in folders:
            client.log_artifacts(run_id, str(d), f"{artifact_path}/{d.name}")
    except MlflowException as e:
        raise ConfigError(f"cannot log to run {run_id} in {uri}: {e.message.splitlines()[0][:300]}") from None
    return f"{run.info.artifact_uri}/{artifact_path}"
