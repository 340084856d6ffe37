# The two commands: `make run` (engine + demo on SQLite) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck unit bench clean test-reliability

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

## Run the engine on ./loyalty.db with demo data, API on http://$(HOST):$(PORT) (docs at /docs)
run: $(VENV)/.installed
	$(BIN)/loyalty init
	$(BIN)/loyalty demo
	$(BIN)/loyalty serve --host $(HOST) --port $(PORT)

## Lint, type-check and run every test on SQLite and PostgreSQL
test: lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(VENV)/.installed-dev
	$(BIN)/python -m pytest tests/unit tests/property

## Crash, fuzz and security tests at full size (thousands of generated requests, 5 kills)
test-reliability: $(VENV)/.installed-dev
	LOYALTY_RELIABILITY_FULL=1 $(BIN)/python -m pytest tests/reliability

bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null; } \
		|| echo "NOTE: wrk is not installed (apt-get install wrk): earn over HTTP uses its Python client"
	$(BIN)/python -m bench
	$(BIN)/python -m bench.simulate_completejourney

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
