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

demo: setup  ## a short training run that leaves checkpoints and says where
	$(PY) -m checkpointing.demo

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

bench: setup  ## every benchmark in bench/
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
