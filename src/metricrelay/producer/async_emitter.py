"""AsyncEmitter: the Emitter for asyncio training loops (the call-site core is emitter.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from metricrelay import progress
from metricrelay.connection import async_client, sync_client
from metricrelay.producer.emitter import EmitterConfig, SpoolPending, _Core, _left
from metricrelay.producer.packing import Marker
from metricrelay.progress import DeliveryReport

__all__ = ["AsyncEmitter"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _within(waiting: Awaitable[Any], timeout: float | None) -> bool:
    """Await ``waiting`` for at most ``timeout`` seconds: False when the time ran out."""
    try:
        async with asyncio.timeout(timeout):
            await waiting
    except TimeoutError:
        return False
    return True


class AsyncEmitter(_Core):
    """For asyncio training loops: ``log_*`` are plain calls; a task writes.

    The writes go the Emitter's way (issue 18: Redis, else the disk spool, replayed in order
    when Redis is back), and so does the blocking work that takes: disk and a synchronous
    client of its own run in threads (``asyncio.to_thread``), not in the event loop — except
    when the buffer is full under policy ``block``: the call then writes itself (see
    :meth:`_wait_for_room`). The asyncio client serves ``flush(wait_delivered=True)``."""

    def __init__(self, execution_id: str | None = None, **options: Any) -> None:
        super().__init__(EmitterConfig(execution_id, **options))
        config = self.config
        self._redis = async_client(
            config.redis_url, cluster=config.cluster, timeout=config.redis_timeout
        )
        self._writes = sync_client(
            config.redis_url, cluster=config.cluster, timeout=config.redis_timeout
        )
        self._diverter = self._divert(self._writes)
        self._writing = threading.Lock()  # held by every write and drain, in any thread
        self._drained = asyncio.Event()  # the Diverter's ``drained``, as the loop last saw it
        self._drained.set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncEmitter:
        self._task = asyncio.create_task(self._run(), name="metricrelay-async-emitter")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _wake(self) -> None:
        self._wakeup.set()

    async def flush(
        self, timeout: float | None = None, *, wait_delivered: bool = False
    ) -> DeliveryReport | None:
        """As :meth:`Emitter.flush`: TimeoutError when time runs out, :class:`SpoolPending`
        when all is safe on disk but not yet in Redis."""
        started = time.monotonic()
        if not await self._durable(timeout):
            raise TimeoutError(f"not everything reached Redis or the spool within {timeout}s")
        if self.spooled and not await _within(self._drained.wait(), _left(started, timeout)):
            raise SpoolPending(self.spooled, self._diverter.location)
        if not wait_delivered:
            return None
        config = self.config
        return await progress.wait_delivered(
            self._redis,
            config.keys,
            config.resource_group,
            config.execution_id,
            list(self.entry_ids),
            timeout=_left(started, timeout),
        )

    async def _durable(self, timeout: float | None) -> bool:
        """Wait until everything logged so far is in Redis or in the spool."""
        done = asyncio.Event()
        self._queue.append(Marker(done.set))
        self._wake()
        return await _within(done.wait(), timeout)

    async def close(self, timeout: float = 30.0) -> None:
        """As :meth:`Emitter.close`: with Redis away the spool stays on disk, logged."""
        if self._closed:
            return
        started = time.monotonic()
        try:  # while Redis is away the spool keeps it all: no need to wait out the timeout
            if not await self._durable(timeout):
                self._unwritten()
            elif self.spooled and self._diverter.redis_up:  # Redis is back: time to replay
                await _within(self._drained.wait(), _left(started, timeout))
        finally:
            self._closed = True
            self._stop = True
            self._wake()
            writer_done = await self._stop_writer()
            await asyncio.to_thread(self._closed_down, writer_done)  # files: off the loop too
            await self._redis.aclose()
            if writer_done:  # else its thread may still be using the client
                self._writes.close()

    async def _stop_writer(self) -> bool:
        """End the writer task; False when it had to be cancelled in the middle of a write
        (its thread may still use the spool, which is then left as it is)."""
        task = self._task
        if task is None:
            return True
        await asyncio.wait({task}, timeout=5)
        if task.done():
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("the writer failed", exc_info=error)
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    def _wait_for_room(self, cost: int, left: float) -> None:
        """Policy ``block`` on the loop's own thread, which cannot wait for the writer task (it
        runs on this loop): the call writes the queue's head itself, blocking the loop as
        ``block`` blocks a caller, and puts it back if neither Redis nor the spool takes it in
        time (BufferFull follows). A write of the writer's thread in progress is waited for."""
        deadline = time.monotonic() + left
        if not self._writing.acquire(timeout=left):
            return
        try:
            if self._over(cost):
                markers = self._write_next(give_up=lambda: time.monotonic() >= deadline)
                self._follow_diverter()  # before a flush's marker fires: it may have spooled
                for marker in markers or ():
                    marker.callback()
        finally:
            self._writing.release()

    def _locked(self, work: Callable[[], T]) -> T:
        with self._writing:
            return work()

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """The Diverter's blocking work, in a thread; then what the loop awaits follows it."""
        result = await asyncio.to_thread(self._locked, work)
        self._follow_diverter()
        return result

    def _follow_diverter(self) -> None:
        """On the loop: ``_drained`` as the Diverter's (a thread's Event cannot be awaited)."""
        if self._diverter.drained.is_set():
            self._drained.set()
        else:
            self._drained.clear()

    async def _drain(self) -> None:
        """The Diverter's catching up, in a thread; no thread at all while it is not behind
        (the usual case: one hop per batch saved)."""
        if self._diverter.behind:
            await self._off_loop(self._diverter.drain)

    async def _run(self) -> None:
        try:
            while not self._stop or self._queue:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._pause()):
                        await self._wakeup.wait()
                self._wakeup.clear()
                await self._drain()  # leftovers and the spool first
                while self._queue:
                    markers = await self._off_loop(self._write_next)
                    if markers is None:
                        return
                    for marker in markers:
                        marker.callback()
                    await self._drain()
        except asyncio.CancelledError:
            # the loop goes away (never closed, or close() gave up): a write still retrying
            # in its thread must end too, or the loop's shutdown would wait for it for ever
            self._stop = self._closed = True
            raise
