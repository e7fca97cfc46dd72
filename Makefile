# Two entry points for a newcomer on a fresh Debian machine (run as root, or prefix with sudo):
#   make run   - set everything up and run the main job
#   make test  - set everything up and run every check and test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SYS_PACKAGES := redis-server sip-tester

.PHONY: setup system venv run test lint bench clean

setup: system venv

# System packages the tests use as real peers; installed only when missing.
system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -o DPkg::Lock::Timeout=300 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=300 $$missing; \
	fi

# uv builds .venv/ from pyproject.toml (+ uv.lock when present).
venv:
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	uv sync --group dev

run: setup
	$(VENV)/bin/handoffctl --help

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict telephony

test: setup lint
	$(VENV)/bin/pytest -q

bench: setup
	uv sync --group dev --group bench
	$(PY) bench/parse.py
	$(PY) bench/transactions.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
