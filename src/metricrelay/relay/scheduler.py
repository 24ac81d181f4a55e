"""Runs bodies with at most one in flight per (resourceGroup, executionId) and a global limit.

An execution's bodies run one after another in the order submitted, so they land in stream
order; different executions run side by side, and an execution that is slow or failing holds at
most one of the global slots, so it never stalls the others. The global limit is the worker
process's :class:`~metricrelay.relay.concurrency.DeliverySlots` (adaptive, shared by its shards)
when given.

When slots are scarce (the API is slower than the stream, or throttles), fewer and fuller requests
carry the same items: a queued body takes in the bodies of its execution submitted after it, up to
the body limits (``fill``, filling.py), and executions whose next body can grow no more go before
those whose next body still can, unless that one has waited ``fill_wait`` seconds. With slots to
spare nothing waits: a body starts as soon as it is submitted — except while the API throttles
(``DeliverySlots.throttled``: a 429 in the last seconds): then requests are what is scarce, and a
body that can still grow waits until it is full or has waited ``fill_wait``, even with a slot
free, so that the API's request rate carries full bodies — unless it was flushed, or nothing
more is coming to fill it (``more_coming``: a burst's end, a drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

from metricrelay.relay.batching import Body, CloseReason
from metricrelay.relay.concurrency import ConcurrencyConfig, DeliverySlots
from metricrelay.relay.tasks import cancel_until_done

__all__ = ["KeyedScheduler"]

log = logging.getLogger(__name__)

Key = tuple[str, str]
# A queued body closed for one of these may still take in the next body of its execution.
_GROWING: Final = frozenset({CloseReason.LINGER, CloseReason.FLUSH, None})


class KeyedScheduler:
    """``slots``, when given, is a limit shared with other schedulers (one per shard in a
    worker process): a body holds one of them while it is delivered. ``fill(into, later)``
    moves the items of a later body of the same execution into a queued one (True: all of
    them). ``clock`` is the one the bodies' ``opened_at`` were read from."""

    def __init__(
        self,
        limit: int,
        run: Callable[[Body], Coroutine[Any, Any, None]],
        slots: DeliverySlots | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        *,
        fill: Callable[[Body, Body], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._run = run
        self._slots = slots
        self._on_error = on_error  # a delivery raised: its holds are unaccounted for now
        config = slots.config if slots is not None else ConcurrencyConfig()
        self._fill = fill if config.fill_queued else None
        self._fill_wait = config.fill_wait
        self._clock = clock
        self._queues: dict[Key, deque[Body]] = {}
        # keys with work and no task, waiting for a slot, in the order they began to wait
        self._full: OrderedDict[Key, None] = OrderedDict()  # their next body can grow no more
        self._growing: OrderedDict[Key, None] = OrderedDict()  # it still can
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None  # a held body's fill_wait running out
        self._more_coming = True  # False at a burst's end or a drain: held bodies go

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
        if not (queue and self._fill is not None and self._fill(queue[-1], body)):
            queue.append(body)  # else it rides with the body queued before it
        self._idle.clear()
        if key in self._growing:
            if not self._can_grow(queue):  # full now: it waits among the full ones
                del self._growing[key]
                self._full[key] = None
        elif key not in self._tasks and key not in self._full:
            self._wait_for_slot(key)
        self._pump()

    def saturated(self) -> bool:
        """No slot is free for this scheduler and as many queued bodies as its own limit can
        take in no more: what is read now could only wait too. Bodies that can still grow do
        not count, so reading goes on while they fill."""
        slots = self._slots
        busy = len(self._tasks) >= self.limit or (slots is not None and slots.in_use >= slots.limit)
        return busy and self._settled() >= self.limit

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
        self._forget()
        if not self._tasks:
            self._idle.set()

    async def cancel(self) -> None:
        """Cancel what runs and forget what waits (their entries stay unacknowledged)."""
        self._forget()
        await cancel_until_done(self._tasks.values())
        self._tasks.clear()
        self._idle.set()

    def _forget(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._queues.clear()
        self._full.clear()
        self._growing.clear()

    def _can_grow(self, queue: deque[Body]) -> bool:
        """Whether the next body of ``queue`` may still take in more: it is the last one queued
        (the one before it refused the next) and was not closed by a limit of its own."""
        return self._fill is not None and len(queue) == 1 and queue[0].close_reason in _GROWING

    def _settled(self) -> int:
        """Queued bodies that cannot grow."""
        if self._fill is None:
            return self.queued
        return sum(
            len(queue) - (queue[-1].close_reason in _GROWING)
            for queue in self._queues.values()
            if queue
        )

    def _wait_for_slot(self, key: Key) -> None:
        (self._growing if self._can_grow(self._queues[key]) else self._full)[key] = None

    def _next_key(self) -> Key | None:
        """The execution whose body goes next: the first that waited for a slot with a body that
        can grow no more; one that still can only if none such waits (and the API does not
        throttle, or it was flushed), or if it waited long. None: only bodies held to fill wait."""
        if self._growing:
            holding = self._holding()
            if not (self._full or holding):
                return next(iter(self._growing))
            now = self._clock()
            for key in self._growing:
                body = self._queues[key][0]
                if now - body.opened_at >= self._fill_wait:
                    return key
                if not self._full and body.close_reason is CloseReason.FLUSH:
                    return key  # flushed (a drain, a burst's end): nothing more is coming
        return next(iter(self._full), None)

    def more_coming(self, more: bool) -> None:
        """Whether later items may still join bodies held to fill: the worker says no at a
        burst's end and when it drains, and yes when a read finds entries again; when not,
        those bodies go now: there is nothing to fill them with."""
        self._more_coming = more
        if not more and self._growing:
            self._pump()

    def _holding(self) -> bool:
        return self._more_coming and self._slots is not None and self._slots.throttled()

    def _pump_when_held_bodies_are_due(self) -> None:
        """Bodies held to fill: pump again when the first of them has waited ``fill_wait``
        (a body that fills up first is submitted, which pumps too)."""
        due = min(self._queues[key][0].opened_at for key in self._growing) + self._fill_wait
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - self._clock()), self._pump)

    def _pump(self) -> None:
        slots = self._slots
        while not self._closed and (self._full or self._growing) and len(self._tasks) < self.limit:
            key = self._next_key()
            if key is None:
                self._pump_when_held_bodies_are_due()
                return
            if slots is not None and not slots.try_take():
                slots.wait(self._pump)  # called again when a slot frees up
                return
            (self._growing if key in self._growing else self._full).pop(key)
            body = self._queues[key].popleft()
            task = asyncio.create_task(self._run(body), name=f"deliver {key[0]}/{key[1]}")
            self._tasks[key] = task
            task.add_done_callback(lambda done, key=key: self._finished(key, done))  # type: ignore[misc]

    def _finished(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("delivery for %s/%s failed unexpectedly", *key, exc_info=error)
            if self._on_error is not None:
                self._on_error(error)
        if self._queues.get(key):
            self._wait_for_slot(key)  # to the back: other executions get their turn first
        else:
            self._queues.pop(key, None)
        if self._slots is not None:
            self._slots.give()  # every task took one, cancelled or not; may start others
        self._pump()
        if not self._tasks and not self._full and not self._growing:
            self._idle.set()
