"""The ``run_js`` fixture: SAP's JavaScript SDK, installed once per checkout (see js_sdk.py)."""

from __future__ import annotations

import pytest
from tests.js.js_sdk import RunJs, js_runner


@pytest.fixture(scope="session")
def run_js() -> RunJs:
    """``run_js(service_key, plan)`` runs tests/js/metrics.mjs and returns what it printed."""
    return js_runner()
