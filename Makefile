# callgate: one command runs what CI runs (`make test`, called by .ci/run). GNU make.
# Works on a fresh Debian machine: creates .venv, installs the package with its test extras, and
# installs the Debian packages the tests use when they are missing. See docs/testing.md.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.callgate-install.stamp

# Debian packages: psql and libpq tools; postgresql-15 has initdb/pg_ctl (private clusters) and pgbench;
# curl is a real client of the HTTP engine's tests.
APT_TEST  := postgresql-client postgresql-15 curl
APT_BENCH := $(APT_TEST) pgbouncer

PYTEST_ARGS     ?=
BENCH_ARGS      ?=
HTTP_BENCH_ARGS ?=

.PHONY: help setup deps-apt test lint pytest bench demo clean distclean

help:
	@echo "make test      lint + pytest (what CI runs; sets everything up on a fresh machine)"
	@echo "make lint      ruff check, ruff format --check, mypy --strict src"
	@echo "make bench     benchmarks: pgbench direct/pgbouncer/callgate (BENCH_ARGS='--duration 5'),"
	@echo "               HTTP GETs direct/callgate (HTTP_BENCH_ARGS='--duration 5'),"
	@echo "               connection setup, audit throughput, masking throughput"
	@echo "make demo      callgate demo"
	@echo "make clean     caches, build output, bench results, install stamp (distclean: also .venv)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml or the C extension changed since the last install.
$(STAMP): pyproject.toml setup.py src/callgate/masking/_rowscan.c | $(BIN)/python
	scripts/ensure-build.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP)

deps-apt:
	scripts/ensure-apt.sh $(APT_TEST)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src

# pytest exits 5 when it collected nothing: that is a failure here, said out loud.
pytest: setup deps-apt
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

test: setup deps-apt
	$(MAKE) lint
	$(MAKE) pytest

# Each benchmark prints its figures and ratios from one run; docs/performance.md quotes them.
bench: setup
	scripts/ensure-apt.sh $(APT_BENCH)
	$(BIN)/python -m bench.pgbench_compare $(BENCH_ARGS)
	$(BIN)/python -m bench.http_compare $(HTTP_BENCH_ARGS)
	$(BIN)/python -m bench.connect_bench
	$(BIN)/python bench/audit_throughput.py
	$(BIN)/python -m bench.masking_throughput

demo: setup deps-apt
	$(BIN)/callgate demo

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist bench/results $(STAMP)
	rm -f src/callgate/masking/_rowscan.*.so

distclean: clean
	rm -rf $(VENV)
