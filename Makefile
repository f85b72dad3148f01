# Operator entry points. Needs only GNU make and python3: everything else is installed
# into .venv by the `venv` target (re-installed only when pyproject.toml changes).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv run test lint bench clean

help:
	@echo "make run    - set up .venv, migrate and seed var/fhirserver.db, start the dev server"
	@echo "make test   - run every test (SQLite + PostgreSQL; browser and Celery tests on PostgreSQL + Redis)"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make bench  - run the benchmarks (bench/run.py, security.py, backend_token.py, hot_path.py; wrk needed; SOAK=1 adds a 10-minute soak)"
	@echo "make clean  - remove var/ (dev database, mail, dev secrets) and caches"

venv: $(STAMP)

# The stamp is newer than pyproject.toml once the install succeeded; a failed install
# leaves no stamp, so the next run tries again.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# Development: SQLite (WAL) under var/, Celery on the filesystem:// broker in var/broker,
# emails captured as var/mail/*.eml. `serve --dev` stops every child on Ctrl-C.
# The demo practice turns two-step sign-in (TOTP MFA) off, so it can be tried without a phone;
# production keeps the default (on). `make run MFA_REQUIRED=1` tries the demo with it on.
run: export OFFICE_NAME ?= Maple Street Family Practice
run: export MFA_REQUIRED ?= 0
run: venv
	@mkdir -p var
	@if [ "$$MFA_REQUIRED" = 0 ]; then echo "make run: two-step sign-in (MFA) is OFF for the demo practice (production: on). Turn it on: make run MFA_REQUIRED=1"; else echo "make run: two-step sign-in (MFA) is ON: providers and staff set up an authenticator app at their first sign-in"; fi
	$(BIN)/fhirserver db upgrade
	$(BIN)/fhirserver seed
	exec $(BIN)/fhirserver serve --dev

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: venv
	@rc=0; $(BIN)/python -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/security.py
	$(BIN)/python bench/backend_token.py
	$(BIN)/python bench/hot_path.py $(if $(SOAK),--soak,)

clean:
	rm -rf var tests/artifacts .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
