# One-command setup, test and demo. `make` alone creates .venv and installs; rerunning it with
# pyproject.toml unchanged does nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := install

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off everywhere (see pipeline/env.py); Prefect and DVC keep their state in the project.
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.sop/dvc-site-cache
export PATH := $(BIN):$(PATH)

.PHONY: install test test-fast lint format typecheck demo bench bench-gpu mlflow-ui clean clean-demo help

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## Create .venv and install the pinned stack (a no-op when up to date).

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lint: install  ## ruff lint and format check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install  ## mypy --strict over pipeline/.
	$(BIN)/mypy

format: install  ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint typecheck  ## Lint, type-check and run the whole suite (slow tests included).
	$(BIN)/pytest -m "not gpu"

test-fast: install  ## The unit tests only.
	$(BIN)/pytest -m "not slow and not gpu"

demo: install  ## Run the pipeline on the embedded synthetic data (CPU, minutes); outputs in demo/.
	$(BIN)/sop repro --params demo/params.yaml
	@echo
	@echo "Tile store:   demo/data/tiles/landcoverai/ (index.parquet), summary in demo/data/tiles/landcoverai.summary.json"
	@echo "Encoders:     demo/models/pretrain/<backbone>/encoder.safetensors (+ provenance.json)"
	@echo "Fine-tuned:   demo/models/finetune/landcoverai/<model>-<fraction>-s<seed>/best.safetensors"
	@echo "Test results: demo/metrics/evaluate/..., confusion matrices in demo/reports/confusion/"
	@echo "Report:       demo/results/report.md (table, claims, plots), demo/results/results.csv"
	@echo "Curves:       demo/plots/{pretrain,finetune}/...csv   (cd demo && dvc plots show)"
	@echo "MLflow UI:    make mlflow-ui   (or: sop mlflow-ui --params demo/params.yaml); the run"
	@echo "              'repro-<time>' in experiment sop-demo holds every stage's run and the report"
	@echo; echo "Pretext (compare val_iou and val_box_iou with baseline_iou):"
	@cd demo && dvc metrics show metrics/pretrain
	@echo; echo "Fine-tuned, on the test split (random vs SOP init at each label fraction):"
	@cd demo && dvc metrics show metrics/evaluate

bench: install  ## CPU benchmarks (data path, tiling, the demo's stage times; ~15 min) -> benchmarks/results.md.
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-gpu: install  ## GPU training throughput and MFU, optimised vs eager (CUDA) -> benchmarks/results.md.
	$(BIN)/python benchmarks/gpu.py $(BENCH_ARGS)

mlflow-ui: install  ## Serve the demo's MLflow runs on http://127.0.0.1:5000.
	$(BIN)/sop mlflow-ui --params demo/params.yaml

clean-demo:  ## Remove everything the demo produced.
	rm -rf demo/data demo/archive demo/models demo/metrics demo/plots demo/reports demo/mlflow.db demo/mlflow.db.lock \
		demo/mlartifacts demo/.sop

clean: clean-demo  ## Also remove the virtual environment.
	rm -rf $(VENV) .sop .pytest_cache .mypy_cache .ruff_cache
