"""For the observability tests: a worker in process with its listener, GETs of it, /metrics."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from metricrelay.relay.endpoints import Endpoints
from metricrelay.relay.service import open_endpoints, open_shard_worker, probe_config
from metricrelay.relay.worker import Worker
from metricrelay.settings import Settings


async def open_observed_worker(
    settings: Settings, stack: AsyncExitStack, **probe: Any
) -> tuple[Worker, Endpoints]:
    """A shard worker and its listener (``run_worker`` runs a fleet of them); ``probe`` overrides
    timings."""
    worker = await open_shard_worker(settings, stack)
    endpoints = await open_endpoints(worker, stack, replace(probe_config(settings), **probe))
    return worker, endpoints


async def get(endpoints: Endpoints, path: str) -> tuple[int, str, str]:
    """status, content type header and text of GET ``path`` on the listener."""
    url = f"http://127.0.0.1:{endpoints.port}{path}"
    timeout = aiohttp.ClientTimeout(total=30)  # a stuck listener fails the test, never hangs it
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), await reply.text()


async def scrape(endpoints: Endpoints) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client: (name, labels) → value."""
    status, _, text = await get(endpoints, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
