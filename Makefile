# The README's commands. Each target creates .venv and installs the pinned versions when missing.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
RUN ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test test-fast bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# Train the seed's VAE on the 5,000 embedded MNIST digits, then evaluate it on their test split with figures.
run: setup
	$(BIN)/vae train --dataset mnist-5k --epochs 10 --out $(RUN)
	$(BIN)/vae evaluate $(RUN) --iw-samples 100
	@echo "figures: $(RUN)/figures"

# The whole suite, slow tests included (about 5 minutes on 2 cores).
test: setup
	$(BIN)/python -m pytest

# The inner loop: everything but the slow tests (DDP, kill-and-resume, full MNIST).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python benchmarks/train_speed.py --json benchmarks/results/train_speed.json

clean:
	rm -rf runs .pytest_cache
