# Quickstart: `make run` (whole stack in the foreground) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Development defaults for a fresh machine; a .env file (see .env.example) or
# the environment takes precedence.
ifeq ($(wildcard .env),)
export ENV ?= dev
export ADMIN_TOKEN ?= dev-admin-token-change-me-in-production
endif

.PHONY: run test lint typecheck bench bench-quick chaos install system-packages clean

# Debian packages the tests and benchmarks drive: Chromium (browser tests), wrk
# (click benchmark), openssl (test certificates) and prometheus (promtool checks the
# alert rules and dashboard queries). Installed on first use; needs root or sudo.
SYSTEM_PACKAGES := chromium wrk openssl prometheus

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

system-packages:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do command -v $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

## Run both services (and migrations) against local PostgreSQL and RabbitMQ; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/click-gateway migrate
	@echo "gateway on :$${GATEWAY_PORT:-8000}, dispatcher on :$${DISPATCHER_PORT:-8001} (Ctrl-C stops both)"
	@trap 'kill -TERM $$gw $$dp 2>/dev/null; wait $$gw $$dp' INT TERM; \
	$(BIN)/click-gateway serve --no-migrate & gw=$$!; \
	$(BIN)/postback-dispatcher serve & dp=$$!; \
	wait -n $$gw $$dp; status=$$?; kill -TERM $$gw $$dp 2>/dev/null; wait $$gw $$dp; exit $$status

## Run the whole test suite against real PostgreSQL, RabbitMQ and HTTP receivers.
test: $(STAMP) system-packages
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared services

bench: $(STAMP) system-packages
	$(BIN)/python -m bench.run --full

bench-quick: $(STAMP) system-packages
	$(BIN)/python -m bench.run --quick

## Chaos run: own 3-node RabbitMQ cluster and PostgreSQL, faults under load (~10 min; root).
## `make chaos CHAOS_ARGS="--light --seed 42"` for the CI size; docs/reliability.md explains it.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
