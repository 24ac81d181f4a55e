"""Orchestration only: read → validate → coalesce → dispatch → acknowledge or dead-letter.

An entry is acknowledged when every holder of its items is done: each body holding some was
accepted by the API (or its failed parts were written to the dead-letter stream), and each of its
invalid items was written to the dead-letter stream. Until then it stays pending, so a crash at
any instant leaves it for another worker to reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from metricrelay.deadletter import DeadLetter, Reason, write_dead_letters
from metricrelay.errors import AuthError
from metricrelay.keys import ShardKeys
from metricrelay.progress import ack_with_progress
from metricrelay.relay import outcome
from metricrelay.relay.batching import Body, Coalescer
from metricrelay.relay.concurrency import DeliverySlots
from metricrelay.relay.config import WorkerConfig
from metricrelay.relay.dispatch import Dispatcher
from metricrelay.relay.entries import EntryBook, MemoryBudget
from metricrelay.relay.filling import Filler
from metricrelay.relay.intake import RouteCheck, decode
from metricrelay.relay.recovery import Recovery
from metricrelay.relay.scheduler import KeyedScheduler
from metricrelay.relay.stream import Entry, EventStream
from metricrelay.relay.tally import Tally, body_tally
from metricrelay.retry import REDIS_BACKOFF, FullWatch, redis_transient, until_done
from metricrelay.wholeentry import SCAN

if TYPE_CHECKING:
    from metricrelay.relay.observability import WorkerMetrics

__all__ = ["Worker", "WorkerConfig"]  # WorkerConfig: relay/config.py

T = TypeVar("T")

log = logging.getLogger(__name__)

# Bytes of entries one read aims at. One read of 1000 packed entries (200 points each) is 200k
# points, ~0.5 s of decoding during which no PATCH response, acknowledgement or next request is
# handled, so the API idles; reading about this much at a time keeps it busy instead
# (bench/worker.py, packed entries: ~137k → ~185k points/s). Single-point entries (~150 bytes)
# still read the configured count.
_READ_TARGET_BYTES = 512 * 1024
# How long a worker that lets go of its entries tries to set their delivery counts back.
_LET_GO_TIMEOUT_S = 2.0


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        stream: EventStream,
        coalescer: Coalescer,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: WorkerMetrics | None = None,
        budget: MemoryBudget | None = None,
        slots: DeliverySlots | None = None,
    ) -> None:
        self.config = config
        self.stream = stream
        self.coalescer = coalescer
        self.dispatcher = dispatcher
        self.clock = clock
        self.book: EntryBook = coalescer.book  # every entry held, its holds, bytes and counts
        self.book.budget = budget or MemoryBudget(config.memory_budget_bytes)
        self.scheduler = KeyedScheduler(
            config.concurrency,
            self._deliver,
            slots,
            self._failed,
            fill=Filler(coalescer),
            clock=clock,
        )
        self._read_count = config.read_count  # entries per read, adapted to their size
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._abandoned = False
        self._let_go = False  # everything held was let go: nothing may touch the book again
        self._crash: BaseException | None = None  # a delivery failed unexpectedly
        # what must be taken back before anything newer is read (recovery.py)
        self.recovery = Recovery(self, exclusive=config.exclusive)
        keys = stream.keys
        self._route_check = (
            RouteCheck(keys, lambda: self.count(Tally.ENTRIES_MISROUTED))
            if isinstance(keys, ShardKeys) and keys.count > 1
            else None
        )
        self._rng = random.Random()
        self.fatal: AuthError | None = None  # why the worker stopped on its own, if it did
        self.full = FullWatch(clock)  # whether Redis refuses writes for lack of memory
        self.stats: dict[str, int] = {}
        self.metrics = metrics  # when given, it sees every count (Prometheus, observability.py)

    @property
    def redis_full_since(self) -> float | None:
        return self.full.since

    @property
    def budget(self) -> MemoryBudget:
        return self.book.budget

    @property
    def held_bytes(self) -> int:
        """Bytes held by every worker sharing this one's budget."""
        return self.budget.held

    @property
    def memory_budget(self) -> int:
        return self.budget.limit

    @property
    def in_flight(self) -> int:
        return self.scheduler.in_flight

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    @property
    def shards_owned(self) -> int:
        return 1

    def count(self, name: Tally, amount: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + amount
        if self.metrics is not None:
            self.metrics.count(name, amount)

    # ------------------------------------------------------------------ the life of a run

    async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``burst``, until nothing is left), then drain.

        Raises :class:`AuthError` if the credentials were refused. On any other error, and on
        cancellation, it first stops every delivery and lets go of every entry it holds (they
        stay pending for the next owner), logs the error with its stack, then raises it.
        """
        self._stop = stop
        self._task = asyncio.current_task()
        if self._abandoned:  # the lease was lost before this run began
            return
        try:
            await self.redis_write("creating the consumer group", self.stream.ensure_group)
            await self._loop(burst)
            if self.fatal is None and not self._abandoned:
                await self._drain()
        except asyncio.CancelledError:
            await self._cut_off(reset=False)
            raise
        except Exception as exc:
            self.count(Tally.CRASHES)
            log.error(
                "worker on %s stopped by an unexpected error; its deliveries are cancelled and "
                "the %d entries it held stay pending for the next owner",
                self.stream.keys.events,
                len(self.book),
                exc_info=exc,
            )
            await self._cut_off(reset=False)  # it may be the entries' fault: their counts stay
            raise
        if self.fatal is not None:
            await self.scheduler.wait_idle(self.config.drain_deadline)
            await self._cut_off(reset=True)
            raise self.fatal

    async def abandon(self) -> None:
        """Stop at once, without draining: the shard now belongs to another worker (its lease
        was lost). What this worker holds stays pending for the new owner to reclaim."""
        self._abandoned = True
        self._stop.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # it may be waiting on Redis: it must not write for this shard again
        await self._cut_off(reset=True)

    async def _cut_off(self, *, reset: bool) -> None:
        """Cancel every delivery and let go of every entry held: its bytes go back to the budget
        and it stays pending in Redis. With ``reset``, its delivery count is set back (best
        effort, briefly): the let-go was not the entry's fault, so it must not become poison."""
        self._let_go = True
        await self.scheduler.cancel()
        deliveries = self.book.let_go()
        if not reset or not deliveries:
            return
        try:
            async with asyncio.timeout(_LET_GO_TIMEOUT_S):
                await self.stream.let_go(deliveries)
        except Exception as exc:  # Redis away: the counts stay one higher, nothing worse
            log.warning(
                "could not set back the delivery counts of %d entries let go (%s: %s)",
                len(deliveries),
                type(exc).__name__,
                exc,
            )

    def _failed(self, error: BaseException) -> None:
        """A delivery raised: the holds of its body are unaccounted for; the run must restart."""
        self._crash = error
        self._stop.set()

    async def _loop(self, burst: bool) -> None:
        next_reclaim = next_trim = self.clock()
        failures = 0
        while not self._stop.is_set():
            try:
                next_reclaim, next_trim = await self._housekeeping(next_reclaim, next_trim)
                got = await self._read_some()
                self._submit(self.coalescer.poll(self.clock()))
                if burst and got == 0 and await self._finished_burst():
                    break
                failures = 0
            except Exception as exc:  # transient: keep what is held; go on once Redis is back
                if not redis_transient(exc):
                    raise
                self.recovery.lost_reply()  # a read may have given us entries
                self._redis_failed(exc)
                delay = REDIS_BACKOFF.delay(failures, self._rng)
                failures += 1
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        if self._crash is not None:
            raise self._crash

    async def redis_write(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """A Redis write retried until it succeeds (retry.py); tells readiness when it did."""
        result = await until_done(operation, what, on_error=self._redis_failed)
        self.full.ok()
        self.still_holding()
        return result

    def still_holding(self) -> None:
        """Called after an await that precedes bookkeeping: if the worker let go meanwhile (a
        lost lease) and the cancellation that should have ended this task was swallowed (see
        scheduler.py), end it now instead of touching entries another worker owns."""
        if self._let_go:
            raise asyncio.CancelledError("the worker let go of its entries")

    def _redis_failed(self, error: BaseException) -> None:
        self.count(Tally.REDIS_ERRORS)
        self.full.failed(error, f"working on {self.stream.keys.events}")

    async def _housekeeping(self, next_reclaim: float, next_trim: float) -> tuple[float, float]:
        """Heartbeat and reclaim, trim and prune, each when due; the next times they are due."""
        now = self.clock()
        if now >= next_reclaim:
            await self.stream.touch(self.book.ids())
            await self.recovery.reclaim()
            next_reclaim = now + self.config.reclaim_interval
        if now >= next_trim:
            self.count(Tally.TRIMMED, await self.stream.trim())
            await self.stream.prune_consumers(self.config.reclaim_idle_ms * 10)
            next_trim = now + self.config.trim_interval
        return next_reclaim, next_trim

    async def _read_some(self) -> int | None:
        """Read and take in new entries; the count read, None if the memory budget is spent."""
        if self.budget.spent or self._saturated():
            self.budget.room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_seconds()):
                    await self.budget.room.wait()
            return None
        if self.recovery.pending:
            await self.recovery.own()
        if not self.recovery.handed_over and not await self.recovery.take_over():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_seconds()):
                    await self._stop.wait()
            return None
        count = min(self.config.read_count, self._read_count)
        entries = await self.stream.read(count, self._block_ms())
        self.still_holding()
        if entries:  # size the next read after these entries (see _READ_TARGET_BYTES)
            self.scheduler.more_coming(True)
            size = sum(entry.size for entry in entries)
            fitting = _READ_TARGET_BYTES * len(entries) // max(1, size)
            self._read_count = max(1, min(self.config.read_count, fitting))
        await self.ingest(entries)
        return len(entries)

    def _saturated(self) -> bool:
        """Every delivery slot is busy and as many bodies again wait for one, full (see
        ``KeyedScheduler.saturated``): what is read now could only wait too, so reading pauses
        until a delivery completes. Without this, a backlog is read as fast as Redis gives it
        (up to the memory budget) whenever the API is the slower side, and peak memory grows
        with the backlog. A slow execution holds one slot at most, so it alone never pauses
        reading for the others."""
        return self.scheduler.saturated()

    def _wait_seconds(self) -> float:
        deadline = self.coalescer.next_deadline()
        horizon = self.config.block_ms / 1000
        if deadline is None:
            return horizon
        return max(0.001, min(horizon, deadline - self.clock()))

    def _block_ms(self) -> int:
        return max(1, int(self._wait_seconds() * 1000))

    async def _finished_burst(self) -> bool:
        self._submit(self.coalescer.flush())
        self.scheduler.more_coming(False)  # the stream is empty: bodies held to fill go now
        await self.scheduler.wait_idle()
        return not self.book and await self.stream.pending_count() == 0

    # ------------------------------------------------------------------ entries in

    async def ingest(
        self, entries: Sequence[Entry], deliveries: dict[str, int] | None = None
    ) -> None:
        """Validate and coalesce entries; dead-letter what is invalid; ack what is done.
        ``deliveries``: how many times each (claimed) entry was delivered; 1 for new ones."""
        letters: list[DeadLetter] = []
        held_by_letters: list[str] = []  # one hold of an entry per dead letter written for it
        done: list[str] = []
        now = self.clock()
        book = self.book
        deliveries = deliveries or {}
        scan, group, add_run = SCAN, self.config.default_resource_group, self.coalescer.add_run
        for entry in entries:
            if not book.admit(entry.id, entry.size, deliveries.get(entry.id, 1)):
                continue  # held already (claimed back while this worker still works on it)
            raw = entry.resource
            plain = None if scan is None or raw is None else scan(raw)
            if plain is not None:  # the commonest entry: plain metrics, valid as written
                key = (plain[0] or group, plain[1])
                if self._route_check is not None:
                    self._route_check(*key)
                add_run(entry.id, key, plain[2], plain[3], now)
                continue
            fragment, invalid = decode(entry, group)
            for letter in invalid:
                book.hold(entry.id)
                letters.append(letter)
                held_by_letters.append(entry.id)
            if fragment is None:
                continue
            key = (fragment.resource_group, fragment.execution_id)
            if self._route_check is not None:
                self._route_check(*key)
            if invalid:
                book.add_counts(entry.id, key, {"items_invalid": len(invalid)})
            done += self.coalescer.add(entry.id, fragment, now)
            for item in self.coalescer.take_rejected():  # invalid on its own: held already
                letters.append(
                    DeadLetter(item.resource(), Reason.INVALID, item.reason, [item.source])
                )
                held_by_letters.append(item.source)
                book.add_counts(item.source, key, {"items_invalid": 1})
        if letters:
            await self.redis_write(
                "writing dead letters",
                lambda: write_dead_letters(self.stream.redis, self.stream.keys, letters),
            )
            self.count(Tally.DEAD_LETTERS_INVALID, len(letters))
            done += book.release(held_by_letters)
        self.count(Tally.ENTRIES_READ, len(entries))
        await self._acknowledge(done)
        self._submit(self.coalescer.take_ready())

    # ------------------------------------------------------------------ bodies out

    def _submit(self, bodies: Iterable[Body]) -> None:
        for body in bodies:
            self.count(body_tally(body.close_reason))
            self.scheduler.submit(body)

    async def _deliver(self, body: Body) -> None:
        started = time.perf_counter()
        try:
            delivery = await self.dispatcher.deliver(body)
            self.still_holding()
        except AuthError as exc:  # its entries stay pending, for when the credentials are fixed
            log.error("stopping: the token service refused the credentials: %s", exc)
            self.fatal = exc
            # Nothing more may be sent: a later body of this execution would land before this
            # one, which is redelivered once the credentials work.
            self.scheduler.halt()
            self._stop.set()
            return
        letters = outcome.dead_letters(delivery)
        if letters:
            await self.redis_write(
                "writing dead letters",
                lambda: write_dead_letters(self.stream.redis, self.stream.keys, letters),
            )
        self.book.add_counts(next(iter(body.sources)), body.key, outcome.progress(body, delivery))
        await self._acknowledge(self.coalescer.complete(body))
        outcome.tally(self.count, body, delivery)
        outcome.log_batch(log, body, delivery, time.perf_counter() - started)

    async def _acknowledge(self, ids: Sequence[str]) -> None:
        """XACK the done ids, raising the progress counts that ride with them in the same
        script (progress.py), so a producer's barrier never sees one without the other."""
        if not ids:
            return
        counts = self.book.counts_of(ids)
        if counts:
            await self.redis_write(
                "acknowledging",
                lambda: ack_with_progress(self.stream.redis, self.stream.keys, ids, counts),
            )
        else:
            await self.redis_write("acknowledging", lambda: self.stream.ack(ids))
        self.book.acked(ids)
        self.count(Tally.ENTRIES_ACKED, len(ids))

    async def _drain(self) -> None:
        """Flush open bodies; wait for deliveries up to the deadline; let go of the rest."""
        self._submit(self.coalescer.flush())
        self.scheduler.more_coming(False)  # nothing more will be read: held bodies go now
        if not await self.scheduler.wait_idle(self.config.drain_deadline):
            log.warning(
                "drain deadline of %.1fs reached: %d deliveries cancelled, their entries stay "
                "pending for another worker",
                self.config.drain_deadline,
                self.scheduler.in_flight + self.scheduler.queued,
            )
        await self._cut_off(reset=True)
