# Everything runs inside the project virtualenv .venv, created on first use.
# torch is pinned to its CPU build through constraints.txt.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast check lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)

demo: setup  ## a short multi-market Ray Tune run: NQ,ES x seeds 42,7, then the summary
	$(PY) -m tuner.run --markets NQ,ES --seeds 42,7 --timesteps 30000 --base-interval 3000 \
		--name $(DEMO_NAME)

test: setup  ## the whole suite: unit, integration (tiny SB3 runs), ray, reliability
	$(PY) -m pytest

test-fast: setup  ## unit tests only
	$(PY) -m pytest tests/unit -q

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

check: lint typecheck test-fast

# Quick runs (about 10 minutes on 2 cores), then one table of every figure. BENCH_ARGS=--full
# for the full runs; BENCH_SKIP_SLOW=1 (or BENCH_ARGS=--skip-slow) skips tune_scaling, search
# and data_load.
BENCH_ARGS ?=

bench: setup  ## every benchmark in bench/, then one table: benchmark, figure, target, result
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
