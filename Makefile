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

test: $(STAMP) $(BIN)/promtool
	$(BIN)/python -m pytest -q

# promtool checks the alerting rules (tests/observability). Taken from PATH, else from Debian's
# prometheus package, unpacked into the venv: nothing installed system-wide, no server started.
# Where neither is possible those two tests say why they skip.
$(BIN)/promtool: | $(STAMP)
	@if command -v promtool >/dev/null; then ln -sf "$$(command -v promtool)" $@; \
	elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then \
		dir=$$(mktemp -d) && (cd $$dir && apt-get download -q prometheus >/dev/null 2>&1) \
		&& dpkg-deb -x $$dir/prometheus_*.deb $$dir/x && cp $$dir/x/usr/bin/promtool $@; \
		rm -rf $$dir; test -x $@ || echo "promtool: could not be fetched from Debian's prometheus package"; \
	else echo "promtool: not on PATH and no apt-get here (Debian: the prometheus package)"; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench hatch_build.py
	$(BIN)/ruff format --check src tests bench hatch_build.py
	$(BIN)/mypy --strict src hatch_build.py bench

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
