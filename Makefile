# kvmgr: the two commands of the README are `make demo` and `make test`.
# Both install what they need (Debian packages, the venv, the daemons) and are idempotent.

VENV      := .venv
PYTHON    := $(VENV)/bin/python
KVMGR     := $(VENV)/bin/kvmgr
STAMP     := $(VENV)/.installed
# Demo ISO location: readable by the qemu user libvirt runs guests as.
DEMO_ISO  ?= /var/lib/kvmgr/demo/kvmgr-demo.iso

.PHONY: all setup system-deps web-ui test-deps venv daemons demo test unit integration lint bench wheel clean

all: test

system-deps:
	sh scripts/install-system-deps.sh

# xterm.js, noVNC and Swagger UI: the web consoles and API docs of every install, demo included.
web-ui:
	sh scripts/install-web-ui.sh

# Chromium, PostgreSQL and virtinst: only the test suite needs them (it re-checks the web libraries).
test-deps:
	@if [ -f scripts/install-test-deps.sh ]; then sh scripts/install-test-deps.sh; fi
	@if [ -f scripts/install-web-deps.sh ]; then sh scripts/install-web-deps.sh; fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $(STAMP)

daemons: venv
	$(KVMGR) host daemons start

setup: system-deps web-ui venv daemons

demo: setup
	DEMO_ISO=$(DEMO_ISO) KVMGR=$(KVMGR) sh scripts/demo.sh

test: setup test-deps
	$(VENV)/bin/pytest

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: setup
	$(VENV)/bin/pytest tests/integration

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# A wheel with the web libraries in it (they are not in git): `pip install dist/kvmgr-*.whl`.
wheel: web-ui venv
	$(PYTHON) -m pip wheel -q --no-deps -w dist .

bench: setup
	$(PYTHON) bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
