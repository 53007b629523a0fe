import os
import tempfile

import pytest

from tests.helpers import selects_gpu_explicitly

# Nothing phones home from tests; set before any mlflow/prefect import.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's database, settings and cached task results of this test session stay out of ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="vae-tests-prefect-")
# Downloads and the sample metrics' classifier cache (<data dir>/classifiers) stay out of ~/.cache/vae.
os.environ.setdefault("VAE_DATA_DIR", tempfile.mkdtemp(prefix="vae-tests-data-"))


def pytest_configure(config):
    # `pytest -m gpu` on a machine without CUDA must not pass by skipping everything.
    if selects_gpu_explicitly(config.option.markexpr):
        import torch  # here, not at the top: conftest sets the environment before anything heavy loads

        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"-m {config.option.markexpr!r} selects the GPU tests, but no CUDA device is visible "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                "run them on a machine with a GPU, or drop -m gpu"
            )


@pytest.fixture(scope="session")
def mnist5k():
    """The embedded 5,000 real MNIST digits, split 4000/500/500."""
    from vae.config import DataConfig
    from vae.data import load

    return load(DataConfig())


@pytest.fixture(scope="session")
def small_cfg():
    """The seed's model on 1,000 embedded digits: a few seconds per epoch budget."""
    from vae.config import Config, DataConfig, TrainConfig

    return Config(data=DataConfig(subset=1000), train=TrainConfig(epochs=2, batch_size=64, progress=False))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, small_cfg):
    """A VAE trained for 4 epochs on 1,000 digits, shared by the tests that need a fitted model."""
    from vae.training import fit

    out = tmp_path_factory.mktemp("trained")
    result = fit(small_cfg.replace(train={"epochs": 4}), out=out)
    return out, result
