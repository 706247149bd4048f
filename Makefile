# The one command surface. `make setup` is implied by every target.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup test lint fmt db worker emulator demo bench chaos clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev,embedded]'
	touch $@

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check worker tests
	$(VENV)/bin/ruff format --check worker tests
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format worker tests
	$(VENV)/bin/ruff check --fix worker tests

db: setup
	$(PY) -m worker db migrate

worker: setup
	$(PY) -m worker run

emulator: setup
	$(PY) -m worker emulator

demo: setup
	$(PY) -m worker demo

bench: setup
	$(PY) -m tests.bench.run_all

chaos: setup
	$(PY) -m tests.bench.chaos

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
