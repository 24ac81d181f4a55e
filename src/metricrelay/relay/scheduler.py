"""Runs bodies with at most one in flight per (resourceGroup, executionId) and a global limit.

An execution's bodies run one after another in the order submitted, so they land in stream
order; different executions run side by side, and an execution that is slow or failing holds at
most one of the global slots, so it never stalls the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from metricrelay.relay.batching import Body
from metricrelay.relay.tasks import cancel_until_done

__all__ = ["KeyedScheduler"]

log = logging.getLogger(__name__)

Key = tuple[str, str]


class KeyedScheduler:
    """``slots``, when given, is a limit shared with other schedulers (one per shard in a
    worker process): a body holds one of them while it is delivered."""

    def __init__(
        self,
        limit: int,
        run: Callable[[Body], Coroutine[Any, Any, None]],
        slots: asyncio.Semaphore | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._run = run
        self._slots = slots
        self._on_error = on_error  # a delivery raised: its holds are unaccounted for now
        self._queues: dict[Key, deque[Body]] = {}
        self._waiting: deque[Key] = deque()  # keys with work, no task, waiting for a slot
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def submit(self, body: Body) -> None:
        if self._closed:  # halted or cancelled: the body's entries stay pending
            return
        key = body.key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(body)
        self._idle.clear()
        if key not in self._tasks and key not in self._waiting:
            self._waiting.append(key)
        self._pump()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """True once nothing is queued or in flight; False if ``timeout`` ran out first."""
        if self._idle.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def halt(self) -> None:
        """Start nothing more and forget what waits; what runs goes on (``wait_idle``)."""
        self._closed = True
        self._queues.clear()
        self._waiting.clear()
        if not self._tasks:
            self._idle.set()

    async def cancel(self) -> None:
        """Cancel what runs and forget what waits (their entries stay unacknowledged)."""
        self._closed = True
        self._queues.clear()
        self._waiting.clear()
        await cancel_until_done(self._tasks.values())
        self._tasks.clear()
        self._idle.set()

    def _pump(self) -> None:
        while not self._closed and self._waiting and len(self._tasks) < self.limit:
            key = self._waiting.popleft()
            body = self._queues[key].popleft()
            task = asyncio.create_task(self._guarded(body), name=f"deliver {key[0]}/{key[1]}")
            self._tasks[key] = task
            task.add_done_callback(lambda done, key=key: self._finished(key, done))  # type: ignore[misc]

    async def _guarded(self, body: Body) -> None:
        if self._slots is None:
            await self._run(body)
            return
        async with self._slots:
            await self._run(body)

    def _finished(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("delivery for %s/%s failed unexpectedly", *key, exc_info=error)
            if self._on_error is not None:
                self._on_error(error)
        if self._queues.get(key):
            self._waiting.append(key)  # to the back: other executions get their turn first
        else:
            self._queues.pop(key, None)
        self._pump()
        if not self._tasks and not self._waiting:
            self._idle.set()
