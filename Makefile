# The two commands: `make run` (whole stack locally) and `make test` (the suite, real broker).
# `make run` ports: KAFKA_PORT=9092 (and the next one up), INGRESS_PORT=8080, WORKER_WEB_PORT=6066,
# e.g. `make run INGRESS_PORT=8081`. `kill -INT` or `kill -TERM` of make's pid stops the whole stack.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check bench topics clean lock

# Dependencies come pinned (with hashes) from the lock files; `make lock` re-pins after a change
# to pyproject.toml. requirements.lock (runtime only) is what the container image installs.
LOCK := requirements-dev.lock
COMPILE := pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -q

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m deploy.local_kafka --fetch >/dev/null
	@touch $(STAMP)

# exec: no shell between make and the launcher (which stops the stack when make is told to stop)
run: $(STAMP)
	exec $(BIN)/python -m deploy.run_local

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

check: lint test

bench: $(STAMP)
	$(BIN)/python -m bench.run_all
	$(BIN)/python -m bench.peers.compare

# the project's topics on the broker of `make run` (or KAFKA_BOOTSTRAP_SERVERS): records, worker lag
topics: $(STAMP)
	$(BIN)/ivr topics

lock:
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv $(COMPILE) -o requirements.lock
	$(BIN)/uv $(COMPILE) --extra dev --extra bench -o $(LOCK)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
