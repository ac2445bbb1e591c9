# The two commands of the README's quick start:
#   make serve   installs what serving needs (a .venv) and runs gunicorn -k gevent wsgi:app
#   make test    installs what the tests need (system packages too, when it can) and runs them all
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck typecheck-ts pytest pytest-gunicorn-lowest bench-smoke system-deps clean

# The socket handoff leans on gunicorn internals (sse_notify/handoff.py): its tests run
# against the highest supported gunicorn (the venv's) and the lowest (pyproject.toml).
GUNICORN_LOWEST := 25.1.0
GUNICORN_LOWEST_DIR := $(VENV)/gunicorn-$(GUNICORN_LOWEST)

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

# The browser client's TypeScript declarations, checked by tsc (from npm) against tests/ts/.
node_modules/.done: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

typecheck-ts: node_modules/.done
	node_modules/.bin/tsc -p tests/ts

pytest: $(VENV)/.dev
	$(BIN)/pytest

$(GUNICORN_LOWEST_DIR)/.done: | $(BIN)/python
	$(BIN)/pip install -q --no-deps --target $(GUNICORN_LOWEST_DIR) gunicorn==$(GUNICORN_LOWEST)
	touch $@

pytest-gunicorn-lowest: $(VENV)/.dev $(GUNICORN_LOWEST_DIR)/.done
	SSE_NOTIFY_TEST_GUNICORN_PATH=$(GUNICORN_LOWEST_DIR) SSE_NOTIFY_TEST_GUNICORN_VERSION=$(GUNICORN_LOWEST) \
		$(BIN)/pytest tests/test_handoff.py

bench-smoke: $(VENV)/.dev
	$(BIN)/python -m bench --smoke

test: system-deps lint typecheck typecheck-ts pytest pytest-gunicorn-lowest bench-smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache instance node_modules
