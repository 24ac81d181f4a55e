"""Fixtures for producer tests: the reference API in a thread, worker processes, a private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.mlflow import point_mlflow

from metricrelay.api import ApiConfig
from metricrelay.api.server import BackgroundServer
from metricrelay.devtools import demo_stack
from metricrelay.devtools.demo_stack import DEMO_TOKEN, ChildProcess
from metricrelay.devtools.embedded import RedisServer


@pytest.fixture
def api() -> Iterator[BackgroundServer]:
    with BackgroundServer(ApiConfig(port=0, static_token=DEMO_TOKEN)) as server:
        yield server


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., ChildProcess]]:
    """``start_worker(redis_url, api, burst=False)``: a ``metricrelay worker`` process sending
    to ``api``; each one still running at the end is stopped with SIGTERM."""
    started: list[ChildProcess] = []

    def start(redis_url: str, api: BackgroundServer, *, burst: bool = False) -> ChildProcess:
        worker = demo_stack.start_worker(
            tmp_path,
            len(started) + 1,
            redis_url,
            api.url,
            burst=burst,
            METRICRELAY_LINGER="0.05",
            METRICRELAY_BLOCK_MS="50",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (it may be stopped and restarted), with AOF."""
    with RedisServer(appendonly="always") as server:
        yield server


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    """``point(url)``: the MLflow client logs to ``url``, with no retries (a refusal is final
    and must show at once) and no run left active from an earlier test."""
    yield from point_mlflow(monkeypatch)
