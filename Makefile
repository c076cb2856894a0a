# One-command setup, test and demo. `make` alone creates .venv and installs the locked
# environment; rerunning it with the lock unchanged does nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := install

PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The lock this machine installs: every distribution, exact versions and hashes (`make lock`
# writes both). requirements/cpu.txt: CPython 3.11, torch's CPU build; requirements/cuda.txt:
# CPython 3.12, torch's CUDA build (the Dockerfile's; `make LOCK=requirements/cuda.txt
# PYTHON=python3.12` on a GPU machine).
LOCK ?= requirements/cpu.txt
LOCK_PYTHON = $(shell sed -n 's/^\#.*for CPython \([0-9.]*\).*/\1/p' $(LOCK) | head -n 1)
# uv reads no pip configuration: hand it the wheel folders pip is configured to search (where
# a machine keeps its CPU build of torch). FIND_LINKS=<folder or URL> names one by hand.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
FIND_LINKS_ARGS = $(foreach link,$(FIND_LINKS),--find-links $(link))
UV := $(BIN)/uv
export UV_PYTHON_DOWNLOADS := never
export SOP_LOCK := $(LOCK)

# Telemetry off everywhere (see pipeline/env.py); Prefect and DVC keep their state in the project.
export NO_ALBUMENTATIONS_UPDATE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.sop/dvc-site-cache
export PATH := $(BIN):$(PATH)

.PHONY: install sync lock test test-fast lint format typecheck demo bench bench-gpu gpu-wheels gpu-check mlflow-ui prefect-ui plots clean clean-demo help

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## Create .venv and install exactly the lock (a no-op when up to date).

$(STAMP): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(v != "$(LOCK_PYTHON)" and f"error: $(LOCK) is for CPython $(LOCK_PYTHON), and $(PYTHON) is {v}: set PYTHON=python$(LOCK_PYTHON) (or LOCK=)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv first, at the lock's version and hash, with the venv's own pip.
	awk '/^uv==/ {p = 1} p {print} p && !/\\$$/ {exit}' $(LOCK) > $(VENV)/uv-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/uv-lock.txt
	@# Every line of the lock carries its hashes, and uv checks them all (its --require-hashes
	@# mode refuses the pin torch==X that a local build X+cpu satisfies).
	$(UV) pip sync --python $(BIN)/python --compile-bytecode $(FIND_LINKS_ARGS) $(LOCK)
	@# The project itself, editable, built with the lock's setuptools (no unlocked build env).
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation --quiet -e .
	@touch $(STAMP)

sync:  ## Put .venv back to exactly the lock (after a package was installed or changed by hand).
	rm -f $(STAMP)
	$(MAKE) install

lock: install  ## Rewrite both locks from pyproject.toml (after a dependency change; LOCK_ARGS=--upgrade floats all).
	@# uv compiles into a copy spelled as uv spells it (torch==X+cpu, the build it found), so
	@# that the pins already locked stay its preferences; the lock then names the release alone
	@# (no +cpu in the project's files), and its hash still picks the CPU build.
	sed 's/^torch==\([0-9.]*\) /torch==\1+cpu /' requirements/cpu.txt > $(VENV)/cpu-lock.txt
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --quiet $(LOCK_ARGS) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(FIND_LINKS_ARGS) \
		--no-emit-find-links --custom-compile-command "make lock  # for CPython 3.11, Linux x86_64, torch's CPU build" \
		-o $(VENV)/cpu-lock.txt
	@grep -q '^torch==[0-9.]*+cpu ' $(VENV)/cpu-lock.txt || { echo "error: no CPU build of torch among the find-links ($(FIND_LINKS)): set FIND_LINKS to a folder or page that holds it" >&2; exit 2; }
	sed 's/^torch==\([0-9.]*\)+cpu /torch==\1 /' $(VENV)/cpu-lock.txt > requirements/cpu.txt
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --quiet $(LOCK_ARGS) \
		--python-version 3.12 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command "make lock  # for CPython 3.12, Linux x86_64, torch's CUDA build" \
		-o requirements/cuda.txt

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
	@echo "Report:       demo/results/report.md (table, claims, plots), demo/results/results.csv (intervals)"
	@echo "Curves:       demo/plots/{pretrain,finetune}/...csv   (make plots: demo/dvc_plots/index.html, offline)"
	@echo "MLflow UI:    make mlflow-ui   (or: sop mlflow-ui --params demo/params.yaml); the run"
	@echo "              'repro-<time>' in experiment sop-demo holds every stage's run and the report"
	@echo "Prefect UI:   make prefect-ui  (or: sop prefect-ui --params demo/params.yaml); the flow"
	@echo "              run 'repro-<time>' of flow paper lists every stage's flow run as a subflow"
	@echo; echo "Pretext (compare val_iou and val_box_iou with baseline_iou):"
	@cd demo && dvc metrics show metrics/pretrain
	@echo; echo "Did each backbone learn more than the position prior?"
	@$(BIN)/sop pretext --params demo/params.yaml
	@echo; echo "Fine-tuned, on the test split, and the paper's claims (from demo/results/report.md):"
	@awk '/^Data:/ {print; print ""} /^## (Test mIoU|The paper)/ {show = 1} /^(Per-image|## Metrics|## Plots)/ {show = 0} show' demo/results/report.md
	@echo; $(BIN)/sop certificate --params demo/params.yaml

bench: install  ## CPU benchmarks (data path, tiling, the demo's stage times; ~15 min) -> benchmarks/results.md.
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-gpu: install  ## GPU training throughput and MFU, optimised vs eager (CUDA) -> benchmarks/results.md.
	$(BIN)/python benchmarks/gpu.py $(BENCH_ARGS)

# The GPU machine's own python3 (3.12, torch and timm, no network) lacks what the check imports
# from these; they travel with the tree as wheels, at the CUDA lock's versions (README, GPU check).
GPU_WHEELS_DIR := .gpu-wheels
GPU_WHEELS := albumentations albucore stringzilla simsimd pydantic pydantic-core annotated-types \
	typing-inspection typing-extensions timm
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/sop-gpu-site
locked_version = $(shell sed -n 's/^$(1)==\([^ ]*\) .*/\1/p' requirements/cuda.txt)

gpu-wheels: install  ## Fetch the GPU check's wheels (CPython 3.12, manylinux) into .gpu-wheels/.
	rm -rf $(GPU_WHEELS_DIR)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(foreach p,$(GPU_PLATFORMS),--platform $(p)) -d $(GPU_WHEELS_DIR) \
		$(foreach name,$(GPU_WHEELS),$(name)==$(call locked_version,$(name)))
	@du -ch $(GPU_WHEELS_DIR)/*.whl | tail -n 1

gpu-check:  ## On the GPU machine (its python3, the wheels of gpu-wheels): CUDA paths, throughput, a grid cell.
	@ls $(GPU_WHEELS_DIR)/*.whl > /dev/null 2>&1 || { echo "error: no wheels in $(GPU_WHEELS_DIR)/: run make gpu-wheels here and carry $(GPU_WHEELS_DIR)" >&2; exit 2; }
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(GPU_SITE) $(GPU_WHEELS_DIR)/*.whl
	PYTHONPATH=$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

mlflow-ui: install  ## Serve the demo's MLflow runs on http://127.0.0.1:5000.
	$(BIN)/sop mlflow-ui --params demo/params.yaml

plots: install  ## The demo's DVC plots as a page that works offline: demo/dvc_plots/index.html.
	$(BIN)/sop plots --params demo/params.yaml

prefect-ui: install  ## Serve the demo's Prefect flow runs on http://127.0.0.1:4200.
	$(BIN)/sop prefect-ui --params demo/params.yaml

clean-demo:  ## Remove everything the demo produced.
	rm -rf demo/data demo/archive demo/models demo/metrics demo/plots demo/reports demo/mlflow.db demo/mlflow.db.lock \
		demo/mlartifacts demo/.sop demo/dvc_plots

clean: clean-demo  ## Also remove the virtual environment.
	rm -rf $(VENV) .sop .pytest_cache .mypy_cache .ruff_cache dvc_plots
