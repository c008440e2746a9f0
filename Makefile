# The two commands of the README: `make demo` runs drflow on the embedded stack with the sandbox,
# `make test` runs every test.
# Both install what they need first (virtualenv, Python packages, system packages such as BIND).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drflow-installed

.PHONY: demo dev test faults lint typecheck architecture install system-deps sandbox-deps schema clean

demo: $(STAMP) sandbox-deps
	$(BIN)/drflow dev --sandbox

dev: $(STAMP)
	$(BIN)/drflow dev

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

# The fault suite alone (docs/reliability.md), with the kill -9 sweeps over every activity boundary that
# `make test` leaves out (about 15 min for the failover, 30 for the failback, on 2 cores).
faults: $(STAMP) system-deps
	$(BIN)/pytest -m faults

install: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap-venv
	@scripts/bootstrap-venv "$(PYTHON)" "$(VENV)"
	@touch $@

system-deps:
	@scripts/system-deps named initdb chromium haproxy ssh-keygen promtool

sandbox-deps:
	@scripts/system-deps named initdb haproxy ssh-keygen

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

architecture: $(STAMP)
	$(BIN)/lint-imports

schema: $(STAMP)
	$(BIN)/drflow runbook schema > docs/runbook.schema.json
	$(BIN)/drflow people schema > docs/people.schema.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache *.egg-info
