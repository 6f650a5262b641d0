# Portico: `make run` brings everything up with demo data; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast check fmt venv lock bench clean conformance-deps

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## Bring up portal, worker, beat, gateway and the demo upstreams on the embedded defaults.
run: $(STAMP)
	$(BIN)/python -m devstack

# Tests keep their own state (secrets, broker folder, SQLite files) apart from `make run`'s.
test test-fast: export PORTICO_VAR_DIR ?= $(CURDIR)/var/test

## The whole test suite: lint and types first, then every test.
test: $(STAMP) check
	$(BIN)/python -m pytest

## Tests without the end-to-end ones (which start real processes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e"

## ruff (lint + format check) and mypy.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

LOCK := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-strip-extras \
	--no-emit-index-url --no-emit-find-links --no-emit-trusted-host

## Re-resolve the pinned, hashed requirement sets from requirements*.in.
lock: $(STAMP)
	$(LOCK) --output-file requirements.txt requirements.in
	$(LOCK) --output-file requirements-dev.txt requirements-dev.in

clean:
	rm -rf var/log var/celery var/gateway

## Benchmarks (bench/): the gateway against a bare aiohttp proxy; writes bench/results/<date>.md.
bench: $(STAMP)
	$(BIN)/python -m bench

CONFORMANCE := tests/conformance

## The MCP conformance suite and the Node 22 it runs on, as tests/conformance/package-lock.json
## pins them (for tests/conformance/test_conformance.py; needs npm 7 or later).
conformance-deps: $(CONFORMANCE)/node_modules/.installed

$(CONFORMANCE)/node_modules/.installed: $(CONFORMANCE)/package.json $(CONFORMANCE)/package-lock.json
	npm ci --prefix $(CONFORMANCE) --no-audit --no-fund
	touch $@
