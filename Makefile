# Scorecast: `make run` runs the whole stack on embedded servers; `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-cluster test lint bench soak browser clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# GATEWAYS=n WORKERS=n: n gateways (consecutive ports from 8001) and n workers on the one Redis.
GATEWAYS ?= 1
WORKERS ?= 1
run: $(STAMP)
	GATEWAYS=$(GATEWAYS) WORKERS=$(WORKERS) $(BIN)/python -m devstack

# The same stack on a local 3-master Redis Cluster (REDIS_CLUSTER=1), two gateways, two workers.
run-cluster: $(STAMP)
	REDIS_CLUSTER=1 GATEWAYS=$(if $(filter command line,$(origin GATEWAYS)),$(GATEWAYS),2) \
	WORKERS=$(if $(filter command line,$(origin WORKERS)),$(WORKERS),2) $(BIN)/python -m devstack

# Headless Chromium for the page tests (Debian package); skipped quietly where apt is unavailable,
# in which case the browser tests fail loudly rather than being skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "warning: could not install chromium; browser tests will fail"; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check contract store gateway ingest devstack sim
	$(BIN)/mypy

test: $(STAMP) browser lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.fanout --clients 1000 --updates 5

# A long simulation with faults (see sim/): SOAK_MINUTES of school, SEED to replay a schedule;
# CLUSTER=1 on a 3-master Redis Cluster with two workers (a master among the faults).
SOAK_MINUTES ?= 10
SEED ?=
CLUSTER ?=
soak: $(STAMP)
	$(BIN)/python -m sim --seconds $$(( $(SOAK_MINUTES) * 60 )) --learners 30 --subscribers 14 $(if $(SEED),--seed $(SEED)) $(if $(CLUSTER),--cluster --workers 2)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
