# OrderFlow: `make run` starts the whole stack, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench campaign clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	exec $(PY) -m app.supervisor

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check app workers simulators chaosproxy tests bench campaign
	$(VENV)/bin/mypy app workers campaign

bench: $(STAMP)
	$(PY) -m bench

# A seeded fault campaign over the real stack (docs/chaos-tests.md). Replay one with the seed it printed:
# make campaign SEED=7 DURATION=90 [CLIENTS=6 SETTLE=120 JSON=path]; DATABASE_URL picks PostgreSQL.
DURATION ?= 600
campaign: $(STAMP)
	$(PY) -m campaign --duration $(DURATION) $(if $(SEED),--seed $(SEED)) $(if $(CLIENTS),--clients $(CLIENTS)) \
		$(if $(SETTLE),--settle $(SETTLE)) $(if $(JSON),--json $(JSON))

clean:
	rm -rf var
