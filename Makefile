# Fulfillment Saga: one command to try it, one to test it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-dev
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install lint typecheck bench bench-all serve clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What the service needs to run.
$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

# Plus the test and lint tools.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUNTIME)

# Plus what the tests use: the performance harness's peers (their smoke tests).
$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(TEST_STAMP) $(STAMP) $(RUNTIME)

install: $(STAMP)

## Run the whole saga on the embedded SQLite database, with a summary at the end.
demo: $(RUNTIME)
	$(BIN)/fulfillment demo

## The whole test suite, with what it needs installed: the dev and bench extras, and (as
## root, by .ci/test-tools) Debian's chromium and iproute2; what cannot be installed is
## named with the tests that skip without it. PostgreSQL and MariaDB tests skip, saying
## why, if no server answers (.ci/servers starts them); under CI=true all of these fail.
test: $(TEST_STAMP)
	.ci/test-tools
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.worker_concurrency

## The whole performance matrix against DBOS, eventsourcing and the plain-SQL limit
## (docs/performance.md; about 26 min at the default 1,000 orders on 2 cores).
bench-all: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.harness --json bench.json --doc docs/performance.md

serve: $(RUNTIME)
	$(BIN)/fulfillment serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache fulfillment-demo.db*
