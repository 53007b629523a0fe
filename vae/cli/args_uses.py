"""Arguments of the commands that use a trained model: reconstruct, encode, decode, denoise, augment,
anomaly, report. MODEL is a run folder, a checkpoint.pt, or an MLflow model URI (models:/NAME@ALIAS,
models:/NAME/VERSION, runs:/RUN_ID/model)."""

from __future__ import annotations

from vae.cli.args import (
    DATASET_HELP,
    INPUT_HELP,
    command,
    data_args,
    deprecated_alias,
    input_args,
    model_arg,
    model_args,
    split_arg,
    split_args,
    tracking_arg,
)


def add_uses_commands(sub) -> None:
    _add_codes(sub)
    _add_denoise_augment(sub)
    _add_anomaly_report(sub)
    _add_serve(sub)


def _add_codes(sub) -> None:
    p = command(
        sub,
        "reconstruct",
        "uses:cmd_reconstruct",
        help="images through the model and back (originals above reconstructions)",
    )
    model_args(p)
    input_args(p)
    p.add_argument(
        "--out",
        required=True,
        help="grid.png (originals above reconstructions, first 32 images) or recon.npy (all, (N, 28, 28) floats)",
    )

    p = command(sub, "encode", "uses:cmd_encode", help="latent means of images (compression, dimensionality reduction)")
    model_args(p)
    input_args(p)
    p.add_argument(
        "--out",
        required=True,
        help="latents.npy ((N, latent) float32) or latents.csv (z0..z{latent-1}, and label when known)",
    )

    p = command(sub, "decode", "uses:cmd_decode", help="images from latent codes written by `vae encode`")
    model_args(p)
    p.add_argument("--latents", required=True, help="a .npy or .csv of shape (N, latent)")
    p.add_argument("--out", required=True, help="grid.png or images.npy ((N, 28, 28) floats)")


def _add_denoise_augment(sub) -> None:
    p = command(
        sub,
        "denoise",
        "uses:cmd_denoise",
        help="clean noisy images; PSNR before and after when it adds the noise itself",
    )
    model_args(p)
    input_args(p)
    p.add_argument(
        "--noise",
        default="gaussian",
        help="gaussian, masking or salt-pepper: corrupt the clean inputs, denoise, and measure PSNR; "
        "none: the inputs are already noisy, just clean them",
    )
    level = p.add_argument(
        "--noise-level", type=float, default=0.3, help="noise std (gaussian) or fraction of pixels hit (default 0.3)"
    )
    deprecated_alias(p, "--level", level)  # its name until the flag took `vae train`'s
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="grid.png (clean / noisy / denoised rows, first 24 images) or denoised.npy")

    p = command(sub, "augment", "uses:cmd_augment", help="new labelled images per class, written as an idx data set")
    model_args(p)
    data_args(p, None, "labelled data set whose training split is augmented", "the model's")
    p.add_argument("--per-class", type=int, required=True, help="new images per class")
    p.add_argument("--spread", type=float, default=1.0, help="z = mu + spread * sigma * eps around each image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-real", action="store_true", help="also include the real training images")
    p.add_argument("--out", required=True, help="new folder: train-* hold the new images, t10k-* the real test split")


def _add_serve(sub) -> None:
    p = command(
        sub,
        "serve",
        "serve:cmd_serve",
        help="a REST server for the model (MLflow's scoring server): POST /invocations",
        description="Serve MODEL over REST until stopped: {'inputs': [[784 pixels]], 'params': {'op': "
        "'encode'}} to /invocations; ops reconstruct, encode, score, sample (see docs/uses.md).",
    )
    model_arg(p)
    tracking_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5055)


def _add_anomaly_report(sub) -> None:
    p = command(
        sub, "anomaly", "uses:cmd_anomaly", help="anomaly scores, a threshold from validation data, AUROC given labels"
    )
    model_args(p)
    p.add_argument(
        "--score",
        help=f"what to score: {INPUT_HELP}; or a data set ({DATASET_HELP}) with --split. Default: the model's data set",
    )
    split_args(p)
    p.add_argument(
        "--fit-on", help="data set whose validation split sets the threshold, named as --score's (default: the model's)"
    )
    p.add_argument(
        "--normal-classes",
        help="digits counted as normal, e.g. 1 or 3,5 (default: the classes in --fit-on's validation split)",
    )
    p.add_argument("--quantile", type=float, default=0.99, help="threshold = this quantile of normal val scores")
    p.add_argument("--kind", default="auto", help="auto (neg-elbo for a VAE, recon for an AE), neg-elbo or recon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="scores.csv: index, score, flagged (and label when known)")

    p = command(
        sub,
        "report",
        "report:cmd_report",
        help="one HTML page: samples, reconstructions, compression, denoising, anomalies",
    )
    model_args(p)
    data_args(p, None, "data set to report on", "the model's")
    split_arg(p)
    p.add_argument("--out", required=True, help="report.html; its PNGs go to a folder beside it (<name>_files)")
    p.add_argument("--run-id", help="MLflow run to attach the report to (default: the run a model URI was logged in)")
    p.add_argument("--no-log", action="store_true", help="do not attach the report to an MLflow run")
    p.add_argument("--seed", type=int, default=0)
