"""The code MLflow loads for a logged VAE model (models-from-code): nothing pickled, so a server runs with
MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false. MLflow executes this file when it loads the model; the weights
are the model's `checkpoint` artifact, read with torch.load(weights_only=True)."""

from mlflow.models import set_model

from vae.tracking.models import VAEPyfunc

set_model(VAEPyfunc())
