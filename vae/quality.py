"""Sample quality: how much samples from the prior look like the test images, in the eyes of a small digit
classifier trained here, on the data set's own training split (no pretrained weights from outside: none can be
fetched on these machines, and the classifier must fit any labelled idx or folder data set).

  sample_fid            the Frechet distance (Heusel et al. 2017, eq. 6) between Gaussians fitted to the
                        classifier's penultimate features of N samples (decoded means, z ~ N(0, I)) and of the
                        test images. Lower is better; 0 for identical statistics.
  sample_fid_floor      the same distance between the validation and the test images: what two real samples
                        of this data set already differ by (the estimator's floor at these sizes).
  sample_class_entropy  entropy (nats) of the classifier's predicted labels over the samples: log(classes)
                        when every class is generated equally often, 0 when one class is all there is.
  classifier_accuracy   the classifier's accuracy on the test split, so its features can be trusted or not.

The classifier is trained once per data set fingerprint and cached (written atomically) under
<data dir>/classifiers/; every later evaluation of any model on that data reuses it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae import checkpoint as ckpt
from vae.data import Dataset, default_data_dir, pixels

log = logging.getLogger(__name__)

FEATURES = 128
SAMPLES = 10_000
STEPS = (
    800  # optimizer steps of the classifier: ~13 epochs of mnist-5k, ~1 of full MNIST (9 s here, test accuracy 0.976)
)
CLASSIFIER_FORMAT = "vae-digit-classifier/1"


class Classifier(nn.Module):
    """Two 3x3 convolutions with max-pooling (28 -> 14 -> 7), a 128-unit feature layer, a linear head."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 7, 7)
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) pixels in [0, 1] -> (B, 128) penultimate features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _batched(fn, x: torch.Tensor, size: int = 2000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[s : s + size]) for s in range(0, x.shape[0], size)])


@torch.enable_grad()
def train_classifier(data: Dataset, seed: int = 0, steps: int = STEPS) -> tuple[Classifier, float]:
    """A classifier of data.train's labels (Adam, batch 64, `steps` steps); returns it and its test accuracy.
    Gradients on even when called under no_grad (an evaluation)."""
    classes = int(max(data.train.labels.max(), data.test.labels.max())) + 1
    torch.manual_seed(seed)
    clf = Classifier(classes)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = pixels(data.train.images), data.train.labels
    for _ in range(steps):
        idx = torch.randint(0, x_all.shape[0], (64,), generator=gen)
        loss = F.cross_entropy(clf(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    predicted = _batched(clf, pixels(data.test.images)).argmax(-1)
    return clf, float((predicted == data.test.labels).float().mean())


def classifier_for(data: Dataset, data_dir: str | Path | None = None) -> tuple[Classifier, float]:
    """The cached classifier of this data set (by fingerprint), trained and cached on first use."""
    folder = (Path(data_dir).expanduser() if data_dir else default_data_dir()) / "classifiers"
    path = folder / f"{data.fingerprint[:32]}.pt"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("kind") == CLASSIFIER_FORMAT and state.get("fingerprint") == data.fingerprint:
                clf = Classifier(int(state["classes"]))
                clf.load_state_dict(state["model"])
                return clf.eval(), float(state["accuracy"])
        except Exception as e:  # a damaged cache entry is replaced, not trusted
            log.warning("classifier cache %s cannot be read (%s): training it again", path, e)
    log.info("training the digit classifier of %s for the sample metrics (once per data set)", data.name)
    clf, accuracy = train_classifier(data)
    state = {
        "kind": CLASSIFIER_FORMAT,
        "fingerprint": data.fingerprint,
        "classes": clf.head.out_features,
        "accuracy": accuracy,
        "model": clf.state_dict(),
    }
    ckpt.save(state, path)
    return clf, accuracy


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between Gaussians fitted to the rows of
    a and b (float64). The matrix square root goes through symmetric eigendecompositions, which stay real and
    stable where a general sqrtm of S_a S_b can turn complex from rounding."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * middle)


def class_entropy(predicted: torch.Tensor, classes: int) -> float:
    """Entropy (nats) of the distribution of predicted labels."""
    p = torch.bincount(predicted, minlength=classes).double() / predicted.numel()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def sample_quality(
    model: nn.Module, data: Dataset, data_dir: str | Path | None = None, n: int = SAMPLES, seed: int = 0
) -> dict[str, Any]:
    """The sample metrics of a model that has a prior (see the module's docstring); {} for one that has not, or
    for data with fewer than two classes (nothing to classify)."""
    if not getattr(model, "is_variational", False) or int(data.train.labels.max()) < 1:
        return {}
    clf, accuracy = classifier_for(data, data_dir)  # trains it (with gradients) the first time
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(30_011 + seed)
    with torch.no_grad():
        samples = torch.cat([model.sample(min(2000, n - s), generator=generator).cpu() for s in range(0, n, 2000)])
    f_samples = _batched(clf.features, samples)
    f_test = _batched(clf.features, pixels(data.test.images))
    f_val = _batched(clf.features, pixels(data.val.images))
    predicted = _batched(clf.head, f_samples).argmax(-1)
    classes = clf.head.out_features
    return {
        "sample_fid": frechet_distance(f_samples, f_test),
        "sample_fid_floor": frechet_distance(f_val, f_test),
        "sample_class_entropy": class_entropy(predicted, classes),
        "sample_class_entropy_max": math.log(classes),
        "classifier_accuracy": accuracy,
        "sample_count": n,
    }
