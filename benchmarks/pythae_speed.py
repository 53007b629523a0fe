"""`vae train` against Pythae's TrainingPipeline: the seed's model, the same data, batch 128, Adam 1e-3.

    python benchmarks/pythae_speed.py [--dataset idx:../shared/data/mnist] [--epochs 5] [--reps 2] [--json FILE]

Pythae (0.1.2, from PyPI) is installed on first use into .bench/pythae (git-ignored), a folder of its own put
on PYTHONPATH of its worker only: the project's venv is not touched, and both sides run on that venv's torch,
so the comparison is of the training code, not of two torch builds. Only pythae and imageio go there
(--no-deps): the rest it needs (pydantic 2, scikit-learn, scipy, cloudpickle) is already in the venv.

Each side runs in its own process, alternated (pythae, vae, pythae, vae). Timed: each epoch's training loop
(Pythae: from its train-step callback to its eval-step callback; `vae train`: the history's epoch_seconds),
so neither side's validation pass counts. Reported: the median seconds per epoch over epochs 2..E of all
reps, the ratio, achieved GFLOP/s against a float32 matmul peak measured in this run, and each model's test
-ELBO with the project's evaluator (Pythae's weights are copied into the same architecture).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / ".bench" / "pythae"
PYTHAE = "pythae==0.1.2"
sys.path.insert(0, str(REPO / "benchmarks"))
from train_speed import FLOP_PER_TRAIN_IMAGE, SHARED, matmul_peak, vae_worker, worker_result  # noqa: E402


def install() -> None:
    if (SITE / "pythae").is_dir():
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*cmd, "--target", str(SITE), PYTHAE, "imageio"], check=True)


def pythae_worker(dataset: str, epochs: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    from torch import nn

    from vae.config import Config, DataConfig
    from vae.data import load, pixels
    from vae.evaluation import elbo_metrics
    from vae.models import build_model

    data = load(DataConfig(dataset=dataset), download=False)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x):
            h = F.relu(self.fc1(x.reshape(-1, 784)))
            return ModelOutput(embedding=self.fc21(h), log_covariance=self.fc22(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).reshape(-1, 1, 28, 28))

    class Clock(TrainingCallback):  # the training loop of each epoch, without the eval pass
        def __init__(self):
            self.start, self.seconds = 0.0, []

        def on_train_step_begin(self, training_config, **kwargs):
            self.start = time.perf_counter()

        def on_eval_step_begin(self, training_config, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    torch.manual_seed(seed)
    model = VAE(
        VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder()
    )
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:  # Pythae saves its final model there
        config = BaseTrainerConfig(
            output_dir=tmp,
            num_epochs=epochs,
            learning_rate=1e-3,
            per_device_train_batch_size=128,
            per_device_eval_batch_size=128,
            train_dataloader_num_workers=0,
            eval_dataloader_num_workers=0,
            steps_saving=None,
            optimizer_cls="Adam",
            no_cuda=True,
        )
        TrainingPipeline(training_config=config, model=model)(
            train_data=pixels(data.train.images).reshape(-1, 1, 28, 28),
            eval_data=pixels(data.val.images).reshape(-1, 1, 28, 28),
            callbacks=[clock],
        )
    ours = build_model(Config().model)
    names = {"fc1": "encoder.0.0", "fc21": "fc_mu", "fc22": "fc_logvar", "fc3": "decoder.0", "fc4": "decoder.2"}
    weights = {**model.encoder.state_dict(), **model.decoder.state_dict()}
    ours.load_state_dict({f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in weights.items()})
    test = elbo_metrics(ours, data.test.images, Config(data=DataConfig(dataset=dataset)))
    return {"epoch_seconds": clock.seconds, "train_images": len(data.train.images), **test}


def run_worker(kind: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--dataset", a.dataset, "--epochs", str(a.epochs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + ([str(SITE)] if kind == "pythae" else []))}
    return worker_result(kind, cmd, env=env, cwd=REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=f"idx:{SHARED}" if SHARED.exists() else "mnist-5k")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=["pythae", "vae"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "pythae":
        print(json.dumps(pythae_worker(a.dataset, a.epochs, seed=0)))
        return
    if a.worker == "vae":
        print(json.dumps(vae_worker(a.dataset, a.epochs, seed=0)))
        return
    install()
    peak = matmul_peak()
    runs: dict[str, list[dict]] = {"pythae": [], "vae": []}
    for rep in range(a.reps):
        for kind in ("pythae", "vae"):
            r = run_worker(kind, a)
            runs[kind].append(r)
            print(
                f"rep {rep + 1} {kind}: epochs {[round(s, 2) for s in r['epoch_seconds']]} s, test -ELBO "
                f"{r['neg_elbo']:.2f}",
                file=sys.stderr,
            )
    n = runs["vae"][0]["train_images"]
    rows = {}
    for kind, rs in runs.items():
        steady = [s for r in rs for s in (r["epoch_seconds"][1:] or r["epoch_seconds"])]
        sec = statistics.median(steady)
        rows[kind] = {
            "seconds_per_epoch": sec,
            "min": min(steady),
            "max": max(steady),
            "gflops": n * FLOP_PER_TRAIN_IMAGE / sec / 1e9,
            "test_neg_elbo": statistics.mean(r["neg_elbo"] for r in rs),
        }
    ratio = rows["pythae"]["seconds_per_epoch"] / rows["vae"]["seconds_per_epoch"]
    print(f"\n{n} training images, batch 128, {a.epochs} epochs x {a.reps} reps; matmul peak {peak:.0f} GFLOP/s")
    print("| trainer | s/epoch (min-max) | GFLOP/s (% of peak) | test -ELBO |\n|---|---|---|---|")
    for kind, label in (("pythae", f"Pythae {PYTHAE.split('==')[1]} TrainingPipeline"), ("vae", "vae train")):
        r = rows[kind]
        print(
            f"| {label} | {r['seconds_per_epoch']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | {r['gflops']:.0f} "
            f"({100 * r['gflops'] / peak:.0f}%) | {r['test_neg_elbo']:.2f} |"
        )
    print(f"vae train is {ratio:.2f}x Pythae's speed")
    if a.json:
        Path(a.json).write_text(json.dumps({"matmul_peak_gflops": peak, "rows": rows, "speedup": ratio}, indent=2))


if __name__ == "__main__":
    main()
