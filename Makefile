# Two entry points for a newcomer on a fresh Debian machine (run as root, or prefix with sudo):
#   make run   - set everything up and run the main job
#   make test  - set everything up and run every check and test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT := apt-get -o DPkg::Lock::Timeout=300
export DEBIAN_FRONTEND := noninteractive
# uv must use the machine's Python (>= 3.11); it cannot download one here.
export UV_PYTHON_DOWNLOADS := never
# uv from PATH, else the copy pip just installed (evaluated at each use, after the install)
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: setup system uv venv compile run test lint bench clean

setup: system venv compile

# System packages the tests use as real peers; installed only when missing.
system:
	@missing=""; \
	command -v python3 >/dev/null || missing="$$missing python3 python3-venv python3-pip"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	{ command -v prometheus && command -v promtool; } >/dev/null || missing="$$missing prometheus"; \
	command -v baresip >/dev/null || missing="$$missing baresip-core"; \
	command -v linphone-daemon >/dev/null || missing="$$missing linphone-nogtk"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  2>/dev/null || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT) update && $(APT) install -y --no-install-recommends $$missing; \
	fi

# uv builds .venv/ from pyproject.toml (+ uv.lock when present).
uv:
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
	  || python3 -m pip install --quiet --break-system-packages uv \
	  || { $(APT) update && $(APT) install -y python3-pip && \
	       python3 -m pip install --quiet --break-system-packages uv; }

# (a target of its own: make expands a recipe before running it, so $(UV) must be
# expanded only after the uv target has installed it)
# Bytecode is compiled here, once: a machine with PYTHONDONTWRITEBYTECODE=1 (the CI machine has
# it) would otherwise compile every module from source at each start of handoffd (3.3 s instead
# of 0.8 s to serve, bench/startup.py). The project itself is installed editable, so its own
# tree is compiled by compileall; a stale .pyc is simply ignored by Python.
venv: uv
	UV_COMPILE_BYTECODE=1 $(UV) sync --group dev --group interop
	$(PY) -m compileall -q telephony

# The SIP and call layers compiled with mypyc (telephony/native.py, ~80 s of gcc), skipped when
# the build in telephony/{sip,call}/_compiled/ is from the current sources. A build from other
# sources is never loaded (the packages run interpreted until this runs again).
compile: venv
	$(PY) -m telephony.native build

# The daemon on the example config, with a local redis-server started here when none answers
# (transfer records go there; while it is down they wait in var/spool). Ctrl-C drains.
run: setup
	@redis-cli -p 6379 ping >/dev/null 2>&1 || \
	  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
	$(VENV)/bin/handoffctl check-config config/handoffd.yaml
	HANDOFF_API_TOKENS=$${HANDOFF_API_TOKENS:-dev-token-change-me} $(VENV)/bin/handoffd --config config/handoffd.yaml

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict telephony

# Every test with the compiled layers (what `make run` runs), then the unit tests once more with
# the interpreted ones (HANDOFF_SIP=interpreted), which run wherever the build is absent.
test: setup lint
	$(VENV)/bin/pytest -q
	HANDOFF_SIP=interpreted $(VENV)/bin/pytest -q tests/unit

bench: setup
	UV_COMPILE_BYTECODE=1 $(UV) sync --group dev --group interop --group bench
	$(PY) bench/parse.py
	$(PY) bench/transactions.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache telephony/sip/_compiled telephony/call/_compiled
