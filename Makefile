# OrderFlow: `make run` starts the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet
# The locked dependencies as downloaded (hashes checked): installs from here need no network.
WHEELS := $(VENV)/wheels
# `make run` installs what the services import; tests, lint and benchmarks add the dev tools on top.
RUN_STAMP := $(VENV)/.runtime-stamp
DEV_STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench campaign lock clean python-version

# Not echoed: the output of `make run` is the stack's log stream alone (JSON lines when it is not a terminal).
run: python-version $(RUN_STAMP)
	@exec $(PY) -m app.stack

test: python-version $(DEV_STAMP) lint
	$(PY) -m pytest

lint: python-version $(DEV_STAMP)
	$(VENV)/bin/ruff check app workers simulators chaosproxy tests bench campaign
	$(VENV)/bin/mypy app workers campaign
	$(VENV)/bin/lint-imports

bench: python-version $(DEV_STAMP)
	$(PY) -m bench

$(RUN_STAMP): requirements.lock pyproject.toml | python-version
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) download --require-hashes --dest $(WHEELS) -r requirements.lock
	@$(PIP) install --require-hashes --no-index --find-links $(WHEELS) -r requirements.lock
	@$(PIP) install --no-deps -e .
	@touch $@

$(DEV_STAMP): $(RUN_STAMP) requirements-dev.lock
	@$(PIP) install --require-hashes -r requirements-dev.lock
	@touch $@

# The interpreter OrderFlow runs on: the venv's once it exists, else $(PYTHON), which creates the venv.
RUN_PYTHON = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
RUN_PYTHON_VERSION = $(shell $(RUN_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PYTHON_FIX = $(if $(wildcard $(PY)),rm -rf $(VENV) and run make again with PYTHON=python3.11 (or newer),run make with PYTHON=python3.11 (or newer))

# $(error) rather than a failing shell line: the message is the one line make prints.
python-version:
	@$(if $(shell printf '3.11\n%s\n' '$(RUN_PYTHON_VERSION)' | sort -V -C && echo ok),:,$(error OrderFlow needs Python >= 3.11 but $(RUN_PYTHON) is $(or $(RUN_PYTHON_VERSION),not a working Python); $(PYTHON_FIX)))

# After a change of pyproject.toml's dependencies: pins the whole tree again, with hashes, keeping the pins
# that still fit (pip-tools, in a venv of its own so the project's stays exactly what the locks say).
LOCK_TOOLS := $(VENV)/lock-tools
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-options
lock: python-version
	@test -x $(LOCK_TOOLS)/bin/pip-compile || ($(RUN_PYTHON) -m venv $(LOCK_TOOLS) \
		&& $(LOCK_TOOLS)/bin/pip install --quiet pip-tools==7.7.0)
	$(COMPILE) --output-file requirements.lock pyproject.toml
	$(COMPILE) --extra dev --constraint requirements.lock --output-file requirements-dev.lock pyproject.toml

# A seeded fault campaign over the real stack (docs/chaos-tests.md). Replay one with the seed it printed:
# make campaign SEED=7 DURATION=90 [CLIENTS=6 SETTLE=120 JSON=path]; DATABASE_URL picks PostgreSQL.
DURATION ?= 600
campaign: python-version $(DEV_STAMP)
	$(PY) -m campaign --duration $(DURATION) $(if $(SEED),--seed $(SEED)) $(if $(CLIENTS),--clients $(CLIENTS)) \
		$(if $(SETTLE),--settle $(SETTLE)) $(if $(JSON),--json $(JSON))

clean:
	rm -rf var
