# Every target is self-contained on a fresh machine: the venv is built (or rebuilt when
# pyproject.toml changes) before anything that needs it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPOSE ?= docker-compose
# Extra pytest arguments: make test PYTEST_ARGS="-k delivery -x"
PYTEST_ARGS ?=

.PHONY: run test lint bench soak compose-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

## run: the embedded default (SQLite, file-system broker): web + worker + beat + demo data
run: $(STAMP)
	$(PY) scripts/run.py

## test: the test suite against throwaway PostgreSQL and Redis servers
test: $(STAMP)
	$(PY) scripts/testenv.py -- $(PYTEST_ARGS)

# mypy's django-stubs plugin imports portal.settings, which wants SECRET_KEY unless DEBUG is on.
## lint: ruff lint and format check; mypy on the files listed in pyproject.toml; import contracts
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=true $(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## bench: benchmarks, each printing ratios against its baseline
bench: $(STAMP)
	$(PY) bench/run_all.py

## soak: long-running reliability tests (marked `soak`)
soak: $(STAMP)
	$(PY) scripts/testenv.py -- tests/reliability -m soak $(PYTEST_ARGS)

## compose-check: validate docker-compose.yml (needs no Docker engine)
compose-check:
	$(COMPOSE) config -q
