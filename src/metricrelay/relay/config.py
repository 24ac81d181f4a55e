"""What one shard's worker is told, and its derivation from the one configuration."""

from __future__ import annotations

from dataclasses import dataclass

from metricrelay.relay.concurrency import ConcurrencyConfig
from metricrelay.settings import Settings

__all__ = ["WorkerConfig", "concurrency_config", "worker_config"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What one shard's worker is told: derived from :class:`~metricrelay.settings.Settings`
    (:func:`worker_config`), with no defaults of its own."""

    default_resource_group: str
    read_count: int
    block_ms: int
    concurrency: int
    memory_budget_bytes: int
    max_deliveries: int
    reclaim_idle_ms: int
    reclaim_interval: float
    trim_interval: float
    drain_deadline: float
    # One owner per shard (leases.py): read new entries only once every entry a previous owner
    # left pending is done, so an execution's entries are delivered in stream order across a
    # change of owner. Those are taken over once idle this long (the previous owner stopped
    # working on them when it lost its lease: see fleet.py), checked every second meanwhile.
    exclusive: bool
    handover_idle_ms: int


def worker_config(settings: Settings, *, exclusive: bool = True) -> WorkerConfig:
    """A shard worker's configuration, all of it from ``settings``; ``exclusive``: it owns its
    stream by a lease (every worker of the service does)."""
    return WorkerConfig(
        default_resource_group=settings.api.resource_group,
        read_count=settings.worker.read_count,
        block_ms=settings.worker.block_ms,
        concurrency=settings.worker.concurrency,
        memory_budget_bytes=settings.worker.memory_budget_bytes,
        max_deliveries=settings.worker.max_deliveries,
        reclaim_idle_ms=settings.reclaim_idle_ms,
        reclaim_interval=max(1.0, settings.reclaim_idle_ms / 4000),
        trim_interval=settings.worker.trim_interval,
        drain_deadline=settings.worker.drain_deadline,
        exclusive=exclusive,
        handover_idle_ms=settings.handover_idle_ms,
    )


def concurrency_config(settings: Settings) -> ConcurrencyConfig:
    """How bodies in flight are limited and queued bodies filled, from ``settings``; the
    controller's tuning constants are ConcurrencyConfig's own."""
    worker = settings.worker
    return ConcurrencyConfig(
        adaptive=worker.adaptive_concurrency,
        fill_queued=worker.fill_queued_bodies,
        fill_wait=worker.fill_wait,
    )
