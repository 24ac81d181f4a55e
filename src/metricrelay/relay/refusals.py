"""429s shared by the workers of one API (issue 16): a refusal answered to one is news to all.

A tenant's request-rate limit is one budget for every worker. Each worker's adaptive limit
(concurrency.py) learns from its own answers only, so with three workers the limit refused one
while the others went on probing upward, and they drew three times the 429s of a single worker.
Here every 429 a worker gets raises a counter in Redis (``INCR``, one key of the prefix), and
every worker reads it five times a second: what the others added is back pressure for its own
limit too (:meth:`DeliverySlots.peers_refused`), so the workers back off together, as one flow.
In a discrete-event model of the remote API (tests/worker/test_concurrency.py) three workers
then draw 2.5 % of 429s instead of 6.5 %, one worker 3.2 %.

Best effort: a Redis error skips a count or a read (logged at debug level); the limit then
learns from the worker's own answers alone, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from metricrelay.relay.concurrency import DeliverySlots

__all__ = ["POLL_S", "SharedRefusals"]

log = logging.getLogger(__name__)

POLL_S: Final = 0.2  # how often the others' 429s are read


class SharedRefusals:
    """Counts this worker's 429s into ``key`` and hands the other workers' to ``slots``."""

    def __init__(self, redis: Any, key: str, slots: DeliverySlots, *, poll: float = POLL_S) -> None:
        self._redis = redis
        self._key = key
        self._slots = slots
        self._poll_s = poll
        self._seen: int | None = None  # the counter as far as it has been accounted for
        self._mine: set[int] = set()  # values our own INCRs returned, not yet passed
        self._counting = 0  # our INCRs not yet answered: a read now could hold one of ours
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        slots.on_throttled = self.throttled

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll(), name="shared 429s")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._poller] if self._poller is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def throttled(self) -> None:
        """This worker got a 429 (called by the delivery slots, in the event loop)."""
        self._counting += 1
        task = asyncio.get_running_loop().create_task(self._count())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _count(self) -> None:
        try:
            value = int(await self._redis.incr(self._key))
        except Exception as exc:
            log.debug("could not count a 429 for the other workers: %s", exc)
            return
        finally:
            self._counting -= 1
        self._mine.add(value)
        if not self._counting:  # every value of ours known (replies may come in any order)
            self.caught_up(max(self._mine))

    async def _poll(self) -> None:
        while True:
            try:
                raw = await self._redis.get(self._key)
            except Exception as exc:
                log.debug("could not read the other workers' 429s: %s", exc)
            else:
                if not self._counting:  # else the value may hold one of ours, not yet known
                    self.caught_up(int(raw or 0))
            await asyncio.sleep(self._poll_s)

    def caught_up(self, value: int) -> None:
        """The counter reads ``value``: the increments since the last one that are not ours are
        the other workers' 429s."""
        seen = self._seen
        if seen is None or value < seen:  # the first read (history is old news), or a reset
            self._seen = value
            self._mine = {mine for mine in self._mine if mine > value}
            return
        peers = 0
        for number in range(seen + 1, value + 1):
            if number in self._mine:
                self._mine.discard(number)
            else:
                peers += 1
        self._seen = max(seen, value)
        if peers:
            self._slots.peers_refused(peers)
