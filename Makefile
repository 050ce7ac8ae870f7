# One place that knows how to set up and run things. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-slow test-gpu bench lint clean gpu-research

# torch is installed first and pinned: on CPU machines torch==2.13.0 is a local CPU wheel, while an
# unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup  ## the main job: chunked M=0 vs GMAT on the majority task
	$(BIN)/gmat demo

test: setup  ## the fast CPU test-suite
	$(BIN)/python -m pytest

test-slow: setup  ## experiments and long checks
	$(BIN)/python -m pytest -m slow

test-gpu: setup  ## needs CUDA
	$(BIN)/python -m pytest -m gpu

bench: setup  ## quick attention benchmark
	$(BIN)/gmat bench attention --quick

gpu-research:  ## on a GPU machine: the RC then MLM research runs, reports into $(OUT) (docs/gpu-research.md)
	OUT="$(OUT)" bash scripts/gpu_research.sh

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
