"""The worker's lifecycle: build from settings → run → drain with a deadline → close.

Signal handlers only set the stop event; a second signal cancels the run at once (whatever is
unacknowledged stays pending in Redis for another replica).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from metricrelay.connection import async_client
from metricrelay.keys import Keys, ShardKeys, format_shard_list
from metricrelay.layout import streams_in_play
from metricrelay.relay.auth import TokenProvider, auth_mode, build_token_provider
from metricrelay.relay.batching import Coalescer, Limits
from metricrelay.relay.concurrency import ConcurrencyConfig, DeliverySlots
from metricrelay.relay.config import concurrency_config, worker_config
from metricrelay.relay.dispatch import Dispatcher
from metricrelay.relay.endpoints import Endpoints, ProbeConfig
from metricrelay.relay.entries import EntryBook, MemoryBudget
from metricrelay.relay.fleet import Fleet, FleetShards
from metricrelay.relay.leases import Leases
from metricrelay.relay.observability import WorkerMetrics
from metricrelay.relay.refusals import SharedRefusals
from metricrelay.relay.stream import EventStream
from metricrelay.relay.worker import Worker
from metricrelay.retry import RetryPolicy
from metricrelay.settings import Settings

__all__ = [
    "metrics_url",
    "open_endpoints",
    "open_shard_worker",
    "open_worker",
    "probe_config",
    "run_worker",
]

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 5.0  # after the drain deadline, for releasing leases and closing connections


def metrics_url(settings: Settings) -> tuple[str, bool]:
    """Where to PATCH, and whether to send the resource-group header (not in-cluster)."""
    if auth_mode(settings.api) == "none":
        return f"{str(settings.api.tracking_endpoint).rstrip('/')}/api/v1/metrics", False
    return f"{str(settings.api.api_url).rstrip('/')}/lm/metrics", True


class _Parts:
    """What every shard's worker of one process shares."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        metrics: WorkerMetrics,
        *,
        concurrency: ConcurrencyConfig | None = None,
    ) -> None:
        self.settings = settings
        self.concurrency = concurrency or concurrency_config(settings)
        self.client = client
        self.session = session
        self.tokens = tokens
        self.metrics = metrics
        self.url, self.with_group = metrics_url(settings)
        self.policy = RetryPolicy(
            settings.worker.retry_base,
            settings.worker.retry_cap,
            settings.worker.retry_budget,
            settings.worker.retry_after_cap,
        )
        self.budget = MemoryBudget(settings.worker.memory_budget_bytes)

    def slots(self) -> DeliverySlots:
        """The limit on bodies in flight (adaptive: concurrency.py), up to the concurrency."""
        return DeliverySlots(self.settings.worker.concurrency, self.concurrency)

    def worker(
        self,
        keys: Keys | ShardKeys,
        *,
        exclusive: bool = False,
        slots: DeliverySlots | None = None,
    ) -> Worker:
        settings = self.settings
        slots = slots if slots is not None else self.slots()
        book = EntryBook(self.budget)
        limits = Limits(max_body_bytes=settings.worker.max_body_bytes)
        coalescer = Coalescer(limits, settings.worker.linger, book)
        dispatcher = Dispatcher(
            self.session,
            self.url,
            self.tokens,
            self.policy,
            timeout=settings.api.request_timeout,
            with_resource_group=self.with_group,
            on_too_large=lambda body: coalescer.learn_too_large(body, time.monotonic()),
            observer=self.metrics,
            limiter=slots,
        )
        stream = EventStream(self.client, keys, settings.worker.consumer_name)
        return Worker(
            worker_config(settings, exclusive=exclusive),
            stream,
            coalescer,
            dispatcher,
            metrics=self.metrics,
            budget=self.budget,
            slots=slots,
        )


async def open_worker(
    settings: Settings, stack: AsyncExitStack, concurrency: ConcurrencyConfig | None = None
) -> Fleet:
    """Build a worker and its connections; ``stack`` closes them.

    Always a :class:`Fleet` that owns streams under leases (fleet.py): every stream, the one
    stream of the default layout included, has one owner at a time, so an execution's bodies
    land in stream order whatever the number of replicas; replicas beyond the streams stand by
    and take over a stream whose owner stops or dies.
    """
    parts = await _open_parts(settings, stack, concurrency)
    client, metrics = parts.client, parts.metrics
    keys = settings.keys()
    current = [keys.shard(index) for index in settings.owned_shards()]
    old = []
    if settings.sharding.drain_shards is not None:
        old = Keys(settings.redis.prefix, settings.sharding.drain_shards).all_shards()
    shards = FleetShards(current, old)
    slots = parts.slots()  # one limit for every shard together
    if slots.aimd is not None:  # the other workers' 429s are back pressure here too
        refusals = SharedRefusals(client, keys.refusals, slots)
        refusals.start()
        stack.push_async_callback(refusals.stop)
    pool = (
        "" if settings.sharding.only_shards is None else format_shard_list(settings.owned_shards())
    )
    leases = Leases(
        client, keys, settings.worker.consumer_name, settings.sharding.lease_ttl, pool=pool
    )
    fleet = Fleet(
        client,
        shards,
        leases,
        lambda shard: parts.worker(shard, exclusive=True, slots=slots),
        parts.budget,
        tick=settings.sharding.lease_ttl / 4,
        metrics=metrics,
        on_workers=slots.share_with,  # they share the API's rate limit: probe as one
    )
    log.info(
        "worker %s sharing %d shards%s",
        settings.worker.consumer_name,
        len(current),
        "" if not shards.old else f" after draining {len(shards.old)} old ones",
    )
    log.info("sending to %s", parts.url)
    metrics.watch(fleet, parts.tokens, slots)
    return fleet


async def open_shard_worker(settings: Settings, stack: AsyncExitStack, index: int = 0) -> Worker:
    """One :class:`Worker` on one stream (shard ``index``), with no lease: for tests and
    benchmarks that look inside a worker. The daemon runs :func:`open_worker`."""
    parts = await _open_parts(settings, stack)
    worker = parts.worker(settings.keys().shard(index))
    parts.metrics.watch(worker, parts.tokens)
    return worker


async def _open_parts(
    settings: Settings, stack: AsyncExitStack, concurrency: ConcurrencyConfig | None = None
) -> _Parts:
    client = async_client(
        settings.redis.redis_url,
        cluster=settings.redis.cluster,
        timeout=settings.redis.redis_timeout,
    )
    stack.push_async_callback(client.aclose)
    session = await stack.enter_async_context(aiohttp.ClientSession())
    tokens = build_token_provider(settings, session)
    return _Parts(settings, client, session, tokens, WorkerMetrics(), concurrency=concurrency)


def probe_config(settings: Settings) -> ProbeConfig:
    return ProbeConfig(
        host=settings.observability.health_host,
        port=settings.observability.health_port or 0,
        ready_api_failure_seconds=settings.observability.ready_api_failure_seconds,
        stray_interval=settings.observability.stray_interval,
        prefix=settings.redis.prefix,
        in_play=tuple(streams_in_play(settings)),
    )


async def open_endpoints(
    worker: Worker | Fleet, stack: AsyncExitStack, config: ProbeConfig
) -> Endpoints:
    """Start the worker's /metrics, /healthz and /readyz listener; ``stack`` stops it."""
    if worker.metrics is None:
        raise ValueError("the worker has no metrics: build it with open_worker()")
    source = worker.stream if isinstance(worker, Worker) else worker
    endpoints = Endpoints(worker.metrics, source, config)
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


async def run_worker(
    settings: Settings, *, burst: bool = False, concurrency: ConcurrencyConfig | None = None
) -> Worker | Fleet:
    """Run one worker until a signal (or, with ``burst``, until the stream is drained)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping: draining for up to %.0fs", settings.worker.drain_deadline)
            stop.set()
            # However stuck a call is (a Redis that never answers), the process ends in time:
            # what is unacknowledged stays pending for the next owner.
            loop.call_later(settings.worker.drain_deadline + _EXIT_GRACE_S, forced_exit)
        elif main is not None:
            log.warning("second signal: exiting now; unfinished entries stay pending")
            main.cancel()

    def forced_exit() -> None:
        if main is not None and not main.done():
            log.warning("drain deadline passed: exiting now; unfinished entries stay pending")
            main.cancel()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal)
    threshold = gc.get_threshold()
    try:
        async with AsyncExitStack() as stack:
            worker = await open_worker(settings, stack, concurrency)
            if settings.observability.health_port is not None:
                await open_endpoints(worker, stack, probe_config(settings))
            _tune_gc()
            await worker.run(stop, burst=burst)
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    # held bytes: what its entry books still count against the memory budget (0 unless a
    # forced exit cut it short); checked by the fault harness
    counts = {str(name): amount for name, amount in worker.stats.items()}
    log.info("worker stopped holding %d bytes: %s", worker.held_bytes, counts)
    return worker
