"""What a trained autoencoder is for: generate, reconstruct, encode/decode (compression and dimensionality
reduction), denoise, augment a labelled data set, score anomalies, and a report page of all of these.

Each function takes a model and float32 (N, 784) pixel arrays in [0, 1] (or a loaded data set) and loads
nothing itself; `vae.checkpoint.load_model` or `vae.tracking.models.resolve_model` bring the model.
"""

from vae.uses.anomaly import (
    SCORE_KINDS,
    auroc,
    fit_threshold,
    one_class,
    parse_classes,
    per_class_auroc,
    scores,
    threshold,
)
from vae.uses.augment import augment, write_augmented
from vae.uses.codes import compression, decode, encode, psnr, quantize, reconstruct, sample
from vae.uses.denoise import NOISES, corrupt, denoise
from vae.uses.report import write_report

__all__ = [
    "SCORE_KINDS",
    "NOISES",
    "auroc",
    "fit_threshold",
    "one_class",
    "parse_classes",
    "per_class_auroc",
    "scores",
    "threshold",
    "augment",
    "write_augmented",
    "compression",
    "decode",
    "encode",
    "psnr",
    "quantize",
    "reconstruct",
    "sample",
    "corrupt",
    "denoise",
    "write_report",
]
