# metricrelay — every target installs what it needs itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint format run bench bench-full chaos clean

install: $(STAMP)

# Re-installs only when the project's metadata changed; a no-op otherwise.
$(STAMP): pyproject.toml hatch_build.py src/metricrelay/_entryscan.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench hatch_build.py
	$(BIN)/ruff format --check src tests bench hatch_build.py
	$(BIN)/mypy --strict src hatch_build.py

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench hatch_build.py
	$(BIN)/ruff format src tests bench hatch_build.py

run: $(STAMP)
	$(BIN)/metricrelay demo

bench: $(STAMP)
	$(BIN)/python -m bench

# The long variant of the worker benchmark: a 5M-point backlog and a longer latency run.
bench-full: $(STAMP)
	$(BIN)/python -m bench worker --full

# The reliability suite and the cluster fault harness at ten times the size `make test` runs.
chaos: $(STAMP)
	METRICRELAY_CHAOS_SCALE=10 $(BIN)/python -m pytest -q tests/reliability tests/cluster/test_cluster_fault_harness.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist .demo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
