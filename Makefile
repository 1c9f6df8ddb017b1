# The two commands: `make run` (whole stack locally) and `make test` (the suite, real broker).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check bench topics clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m deploy.local_kafka --fetch >/dev/null
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m deploy.run_local

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

check: lint test

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
