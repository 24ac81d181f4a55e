"""The worker's lifecycle: build from settings → run → drain with a deadline → close.

Signal handlers only set the stop event; a second signal cancels the run at once (whatever is
unacknowledged stays pending in Redis for another replica).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from contextlib import AsyncExitStack

import aiohttp
import redis.asyncio as redis_asyncio

from metricrelay.auth import build_token_provider
from metricrelay.batching import Coalescer, Limits
from metricrelay.dispatch import Dispatcher
from metricrelay.endpoints import Endpoints, ProbeConfig
from metricrelay.keys import Keys
from metricrelay.observability import WorkerMetrics
from metricrelay.retry import RetryPolicy
from metricrelay.settings import Settings
from metricrelay.stream import EventStream
from metricrelay.worker import Worker, WorkerConfig

__all__ = [
    "metrics_url",
    "open_endpoints",
    "open_worker",
    "probe_config",
    "run_worker",
    "worker_config",
]

log = logging.getLogger(__name__)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        default_resource_group=settings.resource_group,
        read_count=settings.read_count,
        block_ms=settings.block_ms,
        concurrency=settings.concurrency,
        memory_budget_bytes=settings.memory_budget_bytes,
        max_deliveries=settings.max_deliveries,
        reclaim_idle_ms=settings.reclaim_idle_ms,
        reclaim_interval=max(1.0, settings.reclaim_idle_ms / 4000),
        trim_interval=settings.trim_interval,
        drain_deadline=settings.drain_deadline,
    )


def metrics_url(settings: Settings) -> tuple[str, bool]:
    """Where to PATCH, and whether to send the resource-group header (not in-cluster)."""
    if settings.auth_mode() == "none":
        return f"{str(settings.tracking_endpoint).rstrip('/')}/api/v1/metrics", False
    return f"{str(settings.api_url).rstrip('/')}/lm/metrics", True


async def open_worker(settings: Settings, stack: AsyncExitStack) -> Worker:
    """Build a worker and its connections; ``stack`` closes them."""
    client = redis_asyncio.Redis.from_url(settings.redis_url)
    stack.push_async_callback(client.aclose)
    session = await stack.enter_async_context(aiohttp.ClientSession())
    keys = Keys(settings.prefix)
    coalescer = Coalescer(Limits(max_body_bytes=settings.max_body_bytes), settings.linger)
    url, with_group = metrics_url(settings)
    policy = RetryPolicy(
        settings.retry_base, settings.retry_cap, settings.retry_budget, settings.retry_after_cap
    )
    metrics = WorkerMetrics()
    tokens = build_token_provider(settings, session)
    dispatcher = Dispatcher(
        session,
        url,
        tokens,
        policy,
        timeout=settings.request_timeout,
        with_resource_group=with_group,
        on_too_large=coalescer.learn_too_large,
        observer=metrics,
    )
    stream = EventStream(client, keys, settings.consumer_name)
    log.info("worker %s reading %s, sending to %s", settings.consumer_name, keys.events, url)
    worker = Worker(worker_config(settings), stream, coalescer, dispatcher, metrics=metrics)
    metrics.watch(worker, tokens)
    return worker


def probe_config(settings: Settings) -> ProbeConfig:
    return ProbeConfig(
        host=settings.health_host,
        port=settings.health_port or 0,
        ready_api_failure_seconds=settings.ready_api_failure_seconds,
    )


async def open_endpoints(worker: Worker, stack: AsyncExitStack, config: ProbeConfig) -> Endpoints:
    """Start the worker's /metrics, /healthz and /readyz listener; ``stack`` stops it."""
    if worker.metrics is None:
        raise ValueError("the worker has no metrics: build it with open_worker()")
    endpoints = Endpoints(worker.metrics, worker.stream, config)
    await endpoints.start()
    stack.push_async_callback(endpoints.close)
    return endpoints


def _tune_gc() -> None:
    """The hot path allocates a few objects per point, nearly none of them cyclic; with the
    default gen-0 threshold (700) the collector runs every few hundred points and rescans the
    long-lived start-up objects (modules, pydantic schemas) in its older generations. Freezing
    them and collecting less often cut worker CPU per point (bench/worker.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def run_worker(settings: Settings, *, burst: bool = False) -> Worker:
    """Run one worker until a signal (or, with ``burst``, until the stream is drained)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping: draining for up to %.0fs", settings.drain_deadline)
            stop.set()
        elif main is not None:
            log.warning("second signal: exiting now; unfinished entries stay pending")
            main.cancel()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal)
    threshold = gc.get_threshold()
    try:
        async with AsyncExitStack() as stack:
            worker = await open_worker(settings, stack)
            if settings.health_port is not None:
                await open_endpoints(worker, stack, probe_config(settings))
            _tune_gc()
            await worker.run(stop, burst=burst)
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    log.info("worker stopped: %s", worker.stats)
    return worker
