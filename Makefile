# The two commands of the README's quick start:
#   make serve   installs what serving needs (a .venv) and runs gunicorn -k gevent wsgi:app
#   make test    installs what the tests need (system packages too, when it can) and runs them all
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck pytest bench-smoke system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

serve: $(VENV)/.serve
	$(BIN)/gunicorn -k gevent wsgi:app

system-deps:
	@bash scripts/install-system-deps

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest

bench-smoke: $(VENV)/.dev
	$(BIN)/python -m bench --smoke

test: system-deps lint typecheck pytest bench-smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache instance
