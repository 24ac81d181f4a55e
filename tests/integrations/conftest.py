"""Fixtures of the framework integration tests: a private Redis, the reference API and one
worker as processes (tests/support/stack.py), and reading an execution back from the API."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.stack import Stack

from metricrelay.devtools.demo_stack import DEMO_TOKEN
from metricrelay.devtools.embedded import RedisServer

# Transformers reads this when it is imported, which is before any fixture runs
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ReadRun = Callable[[str], dict[str, Any]]
QUICK = {"METRICRELAY_LINGER": "0.05", "METRICRELAY_BLOCK_MS": "50"}


@pytest.fixture(autouse=True)
def _offline_single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub downloads, no thread pools fighting over the machine's two cores."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in [n for n in os.environ if n.startswith(("METRICRELAY_", "AICORE_"))]:
        monkeypatch.delenv(name)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis, the reference API and one running worker, all in the test's folder."""
    with RedisServer(directory=tmp_path / "redis") as server:
        built = Stack(tmp_path, server, worker_env=dict(QUICK))
        try:
            built.start_api()
            built.start_worker(1)
            yield built
        finally:
            built.stop()


@pytest.fixture
def read_run(stack: Stack) -> ReadRun:
    """``read_run(execution_id)``: the execution's resource as the reference API serves it."""

    def read(execution_id: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"executionIds": execution_id})
        request = urllib.request.Request(
            f"{stack.api_url}/v2/lm/metrics?{query}",
            headers={"Authorization": f"Bearer {DEMO_TOKEN}", "AI-Resource-Group": "default"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            resources = json.loads(reply.read())["resources"]
        return resources[0] if resources else {"metrics": [], "tags": [], "customInfo": []}

    return read
