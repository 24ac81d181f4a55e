"""Taking entries back before anything newer is read: this consumer's own, a previous owner's.

Entries may be pending under this consumer that the worker does not hold: a read or a claim whose
reply was lost, or this consumer's work before a restart. And when a shard changes owner, the
previous owner may have left entries pending. Both are finished before a newer entry is read, or
they would reach the API after it (last-write-wins tags). Entries that keep coming back (crash
loops) are dead-lettered as poison instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from metricrelay.deadletter import DeadLetter, Reason, write_dead_letters
from metricrelay.relay.stream import Entry
from metricrelay.relay.tally import Tally

if TYPE_CHECKING:
    from metricrelay.relay.worker import Worker

__all__ = ["Recovery"]

log = logging.getLogger(__name__)

# "start": whatever this consumer left before a restart; "lost reply": after a failed call
# (reading such entries back is no delivery that failed, so their delivery counts are set back).
State = Literal["start", "lost reply"]


class Recovery:
    """What one shard's worker must take back, and the taking back."""

    def __init__(self, worker: Worker, *, exclusive: bool) -> None:
        self._worker = worker
        self._state: State | None = "start"
        # One owner per shard: until nothing a previous owner left is pending, nothing is read.
        self.handed_over = not exclusive
        self._next_handover = 0.0

    @property
    def pending(self) -> bool:
        """Whether this consumer's own pending entries must be read back first."""
        return self._state is not None

    def lost_reply(self) -> None:
        """A call failed: a read may have handed this consumer entries it never saw."""
        self._state = "lost reply"

    async def own(self) -> None:
        """Take back, in stream order, the entries pending under this consumer that the worker
        does not hold."""
        worker = self._worker
        after = "0-0"
        while True:
            entries = await worker.stream.read(worker.config.read_count, None, after)
            worker.still_holding()
            if not entries:
                break
            after = entries[-1].id
            held = [entry.id for entry in entries if entry.id in worker.book]
            if held:  # reading them back counted one more delivery of each: it was none
                await worker.stream.let_go(await worker.stream.delivery_counts(held))
                worker.still_holding()
            unknown = [entry for entry in entries if entry.id not in worker.book]
            if unknown:
                counts = await worker.stream.delivery_counts([entry.id for entry in unknown])
                # one acknowledged while this read was on its way is no longer pending (nor in
                # the book): it was delivered, and must not be again
                unknown = [entry for entry in unknown if entry.id in counts]
            if unknown:
                if self._state == "lost reply":
                    await worker.stream.let_go(counts)  # sets each count one back
                    counts = {i: max(1, n - 1) for i, n in counts.items()}
                worker.still_holding()
                log.info("took back %d entries pending under this consumer", len(unknown))
                await self.take_back([(e, counts.get(e.id, 1)) for e in unknown])
        self._state = None

    async def take_over(self) -> bool:
        """True once no entry is pending that the worker does not hold: what the shard's
        previous owner (or this process before a restart) left is reclaimed and finished
        first, checked every second."""
        worker = self._worker
        # by consumer, not by count: an entry of this worker's can be pending and out of the
        # book (its acknowledgement's reply on its way) while the previous owner's still waits
        mine, others = await worker.stream.pending_by_owner()
        if not others and mine <= len(worker.book):
            self.handed_over = True
            return True
        now = worker.clock()
        if now >= self._next_handover:
            self._next_handover = now + 1.0
            # the previous owner's oldest first, in stream order, never this worker's own
            await self.reclaim(worker.config.handover_idle_ms, oldest_first=True)
        return False

    async def reclaim(self, min_idle_ms: int | None = None, *, oldest_first: bool = False) -> None:
        """Take over entries of dead consumers; poison what keeps coming back. ``oldest_first``:
        in stream order, stopping at the first not idle enough (a hand-over)."""
        worker = self._worker
        idle = worker.config.reclaim_idle_ms if min_idle_ms is None else min_idle_ms
        claim = worker.stream.claim_oldest if oldest_first else worker.stream.reclaim
        claimed = await claim(idle, worker.config.read_count)
        worker.still_holding()
        if claimed:
            log.info("reclaimed %d entries from other consumers", len(claimed))
            worker.count(Tally.RECLAIMED, len(claimed))
        await self.take_back(claimed)

    async def take_back(self, claimed: Sequence[tuple[Entry, int]]) -> None:
        """Entries delivered before, with their delivery counts: poison what keeps coming back
        (crash loops), ingest the rest."""
        worker = self._worker
        limit = worker.config.max_deliveries
        fresh = [(e, n) for e, n in claimed if n <= limit and e.id not in worker.book]
        poison = [(e, n) for e, n in claimed if n > limit and e.id not in worker.book]
        if poison:
            letters = [
                DeadLetter(
                    e.resource or b"",
                    Reason.POISON,
                    f"delivered {n} times without being acknowledged (at most {limit} allowed)",
                    [e.id],
                    attempts=n,
                )
                for e, n in poison
            ]
            stream = worker.stream
            await worker.redis_write(
                "writing dead letters",
                lambda: write_dead_letters(stream.redis, stream.keys, letters),
            )
            ids = [e.id for e, _ in poison]
            await worker.redis_write("acknowledging", lambda: stream.ack(ids))
            worker.count(Tally.DEAD_LETTERS_POISON, len(poison))
        if fresh:
            await worker.ingest([e for e, _ in fresh], {e.id: n for e, n in fresh})
