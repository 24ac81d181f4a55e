"""The shards one worker process owns: a :class:`Worker` per shard, all in one event loop.

Used when there is more than one shard (or while the shard count changes). Every few seconds the
fleet beats, renews the leases it holds (leases.py), hands back shards beyond its share, and takes
free ones up to its share. Each owned shard runs an exclusive :class:`Worker`; they share the HTTP
session, the token, the memory budget and the delivery slots (built by service.py).

While the shard count changes (``drain_shards``), the old layout's shards are worked first: no
shard of the new layout is taken until every old shard is empty, so entries an execution wrote
before the change are delivered before those it wrote after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metricrelay.connection import REDIS_UNAVAILABLE
from metricrelay.errors import AuthError
from metricrelay.keys import ShardKeys
from metricrelay.relay.entries import MemoryBudget
from metricrelay.relay.leases import Leases
from metricrelay.relay.stream import GroupInfo, read_group_info
from metricrelay.relay.tasks import wait_any
from metricrelay.relay.worker import Worker
from metricrelay.retry import FullWatch, redis_transient

if TYPE_CHECKING:
    from metricrelay.relay.observability import WorkerMetrics

__all__ = ["Fleet", "FleetShards", "shard_has_work"]

log = logging.getLogger(__name__)


async def shard_has_work(redis: Any, shard: ShardKeys) -> bool:
    """Entries of the shard not yet delivered, or delivered and not yet acknowledged."""
    info = await read_group_info(redis, shard)
    if info is None:  # no group yet: whatever the stream holds is still to be read
        return bool(await redis.xlen(shard.events))
    if info.pending:
        return True
    if info.lag is not None:
        return info.lag > 0
    # lag unknown (Redis < 7, or deleted entries): look for an entry after the last delivered
    return bool(await redis.xrange(shard.events, f"({info.last_delivered}", "+", count=1))


def _add(total: dict[str, int], stats: dict[str, int]) -> None:
    for name, amount in stats.items():
        total[name] = total.get(name, 0) + amount


@dataclass
class _Owned:
    shard: ShardKeys
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[None]
    renewed: float  # monotonic time the lease was last acquired or renewed
    lost: bool = False
    leaving: bool = False  # handed back: draining, released when its task ends


@dataclass
class FleetShards:
    """Which shards a fleet may own: the current layout's (``current``), and while the shard
    count changes, the old layout's (``old``), worked first."""

    current: Sequence[ShardKeys]
    old: Sequence[ShardKeys] = field(default_factory=list)


class Fleet:
    def __init__(
        self,
        redis: Any,
        shards: FleetShards,
        leases: Leases,
        build: Callable[[ShardKeys], Worker],
        budget: MemoryBudget,
        *,
        tick: float,
        clock: Callable[[], float] = time.monotonic,
        metrics: WorkerMetrics | None = None,
        on_workers: Callable[[int], None] | None = None,
    ) -> None:
        self.metrics = metrics
        # told, every tick, how many workers deliver now (live ones, at most one per shard)
        self.on_workers = on_workers
        self.redis = redis
        self.shards = shards
        self.leases = leases
        self.build = build
        self.budget = budget
        self.tick = tick
        self.clock = clock
        self.owned: dict[str, _Owned] = {}  # by shard events key
        self._drained = not shards.old
        # the tallies of shard workers that have finished (their objects are not kept: a
        # long-running fleet takes and hands back shards many times)
        self._finished: dict[str, int] = {}
        self.fatal: AuthError | None = None
        self._burst = False
        self._beaten = False
        self._workers = 1  # live workers at the last beat that got through
        self.full = FullWatch(clock)  # the fleet's own calls (leases, beats)
        self._offset = zlib.crc32(leases.me.encode())  # workers search from different shards
        self._ended = asyncio.Event()  # a shard worker ended: rebalance now, not after a tick

    # ------------------------------------------------------------------ what observers read

    @property
    def stats(self) -> dict[str, int]:
        total = dict(self._finished)
        for owned in self.owned.values():
            _add(total, owned.worker.stats)
        return total

    @property
    def held_bytes(self) -> int:
        return self.budget.held

    @property
    def memory_budget(self) -> int:
        return self.budget.limit

    @property
    def in_flight(self) -> int:
        return sum(o.worker.scheduler.in_flight for o in self.owned.values())

    @property
    def queued(self) -> int:
        return sum(o.worker.scheduler.queued for o in self.owned.values())

    @property
    def shards_owned(self) -> int:
        return sum(1 for owned in self.owned.values() if not owned.lost)

    @property
    def redis_full_since(self) -> float | None:
        """Since when Redis refuses writes for lack of memory (this fleet's or a shard's)."""
        times = [o.worker.redis_full_since for o in self.owned.values()]
        known = [t for t in (self.full.since, *times) if t is not None]
        return min(known) if known else None

    async def group_info(self) -> GroupInfo | None:
        """Lag and pending summed over the shards this process may own; None if no shard has a
        consumer group yet."""
        shards = (*self.shards.old, *self.shards.current)
        infos = [await read_group_info(self.redis, shard) for shard in shards]
        known = [info for info in infos if info is not None]
        if not known:
            return None
        lags = [info.lag for info in known]
        lag = None if any(x is None for x in lags) else sum(x or 0 for x in lags)
        return GroupInfo(sum(info.pending for info in known), lag)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
        """Own and work shards until ``stop`` (or, with ``burst``, until every shard is empty);
        then drain every owned shard and release its lease."""
        self._burst = burst
        watchdog = asyncio.create_task(self._watch_leases(), name="lease watchdog")
        try:
            while not stop.is_set() and self.fatal is None:
                self._ended.clear()  # set again by a shard worker ending from here on
                try:
                    await self._rebalance(burst)
                    if burst and not self.owned and await self._all_empty():
                        break
                    self.full.ok()
                except Exception as exc:
                    if not redis_transient(exc):
                        raise
                    self._redis_failed(exc, "balancing shards")
                    await self._expire_unrenewed()
                await wait_any((stop, self._ended), self.tick)
        finally:
            try:
                await self._stop_all()
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
        if self.fatal is not None:
            raise self.fatal

    async def _watch_leases(self) -> None:
        """Stop work on a shard whose lease was not renewed in time, whatever the loop is doing:
        a renewal (or any other call) whose reply does not come must not keep a worker reading
        after its lease may have become another's."""
        while True:
            await asyncio.sleep(self.leases.ttl_ms / 1000 / 20)
            await self._expire_unrenewed()

    def _redis_failed(self, exc: Exception, what: str) -> None:
        self.full.failed(exc, what)
        if self.full.since is None:
            log.warning("redis unavailable while %s (%s)", what, exc)

    def _eligible(self) -> list[ShardKeys]:
        shards = list(self.shards.old)
        if self._drained:
            shards += self.shards.current
        return shards

    async def _rebalance(self, burst: bool) -> None:
        await self._reap()
        if not self._drained and await self._old_layout_empty():
            self._drained = True
            log.info("the old shard layout is drained: taking shards of the new layout")
        await self._renew()  # first: a lease (PEXPIRE) renews even when Redis is full
        try:
            self._workers = workers = await self.leases.beat()
        except Exception as exc:  # a full Redis refuses the beat (ZADD): go on with the last
            if not redis_transient(exc):
                raise
            self._redis_failed(exc, "beating")
            workers = self._workers
        eligible = self._eligible()
        if self.on_workers is not None:
            self.on_workers(max(1, min(workers, len(eligible))))
        # one tick to let replicas started together see each other before sharing the shards
        # (one shard is never shared: the first to ask owns it, the others stand by)
        if not self._beaten and len(eligible) > 1:
            self._beaten = True
            return
        share = Leases.share(len(eligible), workers)
        staying = [o for o in self.owned.values() if not o.leaving and not o.lost]
        for extra in staying[share:]:  # more than our share: hand back, after draining
            log.info("handing shard %s back (%d workers share the shards)", extra.shard, workers)
            extra.leaving = True
            extra.stop.set()
        want = share - min(len(staying), share)
        start = self._offset % len(eligible) if eligible else 0
        for shard in [*eligible[start:], *eligible[:start]]:
            if want <= 0:
                break
            if shard.events in self.owned:
                continue
            if burst and not await shard_has_work(self.redis, shard):
                continue
            if await self.leases.acquire(shard):
                self._start(shard)
                want -= 1

    def _start(self, shard: ShardKeys) -> None:
        worker = self.build(shard)
        stop = asyncio.Event()
        task = asyncio.create_task(self._work(worker, stop), name=f"shard {shard.name}")
        self.owned[shard.events] = _Owned(shard, worker, stop, task, self.clock())
        log.info("took shard %s (%s)", shard.name, shard.events)

    async def _work(self, worker: Worker, stop: asyncio.Event) -> None:
        # A burst fleet's shard workers stop once their shard is empty; the fleet takes the
        # shard again if more arrives before every shard is empty.
        await worker.run(stop, burst=self._burst)
        # Ended cleanly: its lease is released at once. A crash is seen at the next tick, so a
        # shard worker that crashes again and again is not restarted in a tight loop.
        self._ended.set()

    async def _renew(self) -> None:
        now = self.clock()
        for owned in list(self.owned.values()):
            if owned.lost:
                continue
            try:
                kept = await self.leases.renew(owned.shard)
            except Exception as exc:
                if not redis_transient(exc):
                    raise
                log.warning("could not renew the lease of shard %s (%s)", owned.shard.name, exc)
                continue
            if kept:
                owned.renewed = now
            else:
                await self._lose(owned, "its lease was taken over")
        await self._expire_unrenewed()

    async def _expire_unrenewed(self) -> None:
        """A lease not renewed within most of its time to live may be another worker's soon."""
        limit = self.leases.ttl_ms / 1000 * 0.8
        for owned in list(self.owned.values()):
            if not owned.lost and self.clock() - owned.renewed > limit:
                await self._lose(owned, "its lease could not be renewed in time")

    async def _lose(self, owned: _Owned, why: str) -> None:
        owned.lost = True
        log.warning("shard %s: %s; stopping work on it", owned.shard.name, why)
        await owned.worker.abandon()

    async def _reap(self) -> None:
        """Forget shards whose worker finished: release their lease; note a fatal error."""
        for key, owned in list(self.owned.items()):
            if not owned.task.done():
                continue
            del self.owned[key]
            _add(self._finished, owned.worker.stats)
            error = None if owned.task.cancelled() else owned.task.exception()
            if isinstance(error, AuthError):
                self.fatal = error
            elif error is not None:
                log.error("shard %s stopped unexpectedly", owned.shard.name, exc_info=error)
            # Also a lost lease: if it is still this worker's (it could not renew while Redis
            # was away), releasing it lets the shard be taken again at once; if another worker
            # holds it, the release is a no-op.
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await self.leases.release(owned.shard)
            log.info("released shard %s", owned.shard.name)

    async def _old_layout_empty(self) -> bool:
        for shard in self.shards.old:
            if await shard_has_work(self.redis, shard):
                return False
        return True

    async def _all_empty(self) -> bool:
        if not self._drained:
            return False
        for shard in self._eligible():
            if await shard_has_work(self.redis, shard):
                return False
        return True

    async def _stop_all(self) -> None:
        for owned in self.owned.values():
            owned.stop.set()
        waiting = {owned.task for owned in self.owned.values()}
        while waiting:  # the leases are renewed while the shards drain: a drain may outlast one
            _, waiting = await asyncio.wait(waiting, timeout=self.tick)
            if waiting:
                try:
                    await self._renew()
                except Exception as exc:  # the drain goes on; the watchdog stops it in time
                    self._redis_failed(exc, "renewing leases while draining")
        await self._reap()
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self.leases.leave()
