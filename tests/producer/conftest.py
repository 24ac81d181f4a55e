"""Fixtures for producer tests: the reference API in a thread, a worker process, read-back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metricrelay.api import ApiConfig
from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer

TOKEN = "producer-test-token"


@pytest.fixture
def api() -> Iterator[BackgroundServer]:
    with BackgroundServer(ApiConfig(port=0, static_token=TOKEN)) as server:
        yield server


def worker_env(redis_url: str, api: BackgroundServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    env.update(
        {
            "METRICRELAY_REDIS_URL": redis_url,
            "METRICRELAY_API_URL": api.base_url,
            "METRICRELAY_TOKEN": TOKEN,
            "METRICRELAY_LINGER": "0.05",
            "METRICRELAY_BLOCK_MS": "50",
        }
    )
    return env


@pytest.fixture
def start_worker() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``metricrelay worker`` processes; each is stopped with SIGTERM at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(redis_url: str, api: BackgroundServer, *flags: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "metricrelay", "worker", *flags],
            env=worker_env(redis_url, api),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def stored(api: BackgroundServer, execution_id: str, group: str = "default") -> dict[str, Any]:
    """The execution's resource as the reference API serves it (GET over HTTP)."""
    query = urllib.parse.urlencode({"executionIds": execution_id})
    request = urllib.request.Request(
        f"{api.base_url}/lm/metrics?{query}",
        headers={"Authorization": f"Bearer {TOKEN}", "AI-Resource-Group": group},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        resources = json.loads(reply.read())["resources"]
    return resources[0] if resources else {"metrics": [], "tags": [], "customInfo": []}


@pytest.fixture
def read_back() -> Callable[..., dict[str, Any]]:
    return stored


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (it may be stopped and restarted), with AOF."""
    with RedisServer(appendonly="always") as server:
        yield server
