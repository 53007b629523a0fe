# The README's commands. Each target creates .venv and installs the pinned versions when missing.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# The default night, as benchmarks/search_quality.py measures it (its NIGHT): keep the two in step.
PIPELINE_ARGS ?= --dataset mnist-5k --trials 8 --epochs 50 --iw-samples 100

.PHONY: setup run train test test-fast lint format bench faults faults-quick gpu-prep gpu-check-cpu services services-stop clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# The pipeline on the 5,000 embedded MNIST digits: fetch, tune (8 trials of up to 50 epochs, early stopping),
# evaluate the winner, register in MLflow (mlruns/), promote. The README's quick start gives its measured time.
run: setup
	$(BIN)/python -m flows.pipeline $(PIPELINE_ARGS)

# The seed recipe alone: train 10 epochs and evaluate with figures, no orchestration.
train: setup
	out=runs/seed-$$(date +%Y%m%d-%H%M%S) && $(BIN)/vae train --dataset mnist-5k --epochs 10 --out $$out \
	  && $(BIN)/vae evaluate $$out --iw-samples 100 && echo "figures: $$out/figures"

# The whole suite, slow tests included (429 tests; 31:52 of pytest with 428 on 2 cores, 2026-12-07: live servers and flows).
test: setup
	$(BIN)/python -m pytest

# The inner loop: everything but the slow tests (DDP, kill-and-resume, full MNIST).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# ruff: the linter and the formatter, configured in pyproject.toml; CI runs `make lint` before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Issue 22's fault matrix (benchmarks/faults.py): a small night on a stack of its own (PostgreSQL, MLflow and
# Prefect servers on ports 6300-6302), one fault per case, the next night, then the checks; ends with
# `faults: S of N survived`. faults-quick is the three cases CI runs beside `make test`.
faults: setup
	$(BIN)/python benchmarks/faults.py --json benchmarks/results/faults.json

faults-quick: setup
	$(BIN)/python benchmarks/faults.py --quick

bench: setup
	$(BIN)/python benchmarks/train_speed.py --json benchmarks/results/train_speed.json
	$(BIN)/python benchmarks/pipeline_stages.py --json benchmarks/results/pipeline_stages.json

# The shared services a team runs, on 127.0.0.1: PostgreSQL (MLflow's backend and Optuna's storage), an MLflow
# server, a Prefect server and one process worker on the work pool `vae` (vae/services.py), all behind logins.
# Prints the URLs and the env file to read: set -a; . .services/client.env; set +a
# NOTIFY=URL: failed nights, waiting sign-offs, drift, new versions and alias moves are sent there.
services: setup
	$(BIN)/python -m vae.services start $(if $(NOTIFY),--notify $(NOTIFY))

services-stop: setup
	$(BIN)/python -m vae.services stop

# The prepared GPU check (benchmarks/gpu_check.py). gpu-prep copies the official MNIST files into .gpu/mnist and
# downloads into .gpu/wheels the Python 3.12 wheels that `vae tune --no-tracking` needs and the GPU machine
# lacks (it has torch, numpy, tqdm, PyYAML, packaging, MarkupSafe, typing_extensions, filelock), at the
# versions of constraints.txt; .gpu (git-ignored, ~17 MB) is carried to the device run. gpu-check-cpu is the
# check's quick CPU mode, about two minutes.
GPU_WHEELS := optuna optuna-integration alembic colorlog SQLAlchemy Mako
gpu-prep:
	mkdir -p .gpu/mnist && cp ../shared/data/mnist/*-ubyte.gz .gpu/mnist/
	rm -rf .gpu/wheels && python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux_2_28_x86_64 -c constraints.txt -d .gpu/wheels $(GPU_WHEELS)

gpu-check-cpu: setup
	$(BIN)/python benchmarks/gpu_check.py --device cpu --quick --out runs/gpu-check-cpu

clean:
	rm -rf runs .pytest_cache
