"""The one owner of every stream entry a worker holds, from its read to its acknowledgement.

An entry's life: it is read (or claimed) and admitted — its bytes count against the process's
memory budget; its items go into bodies and dead letters, each of which holds it once; progress
counts of what became of its items ride with it; when the last hold is released it is done, and
once its acknowledgement (with those counts) is written it is forgotten and its bytes are given
back. Every way out — delivered, dead-lettered, abandoned on a lost lease, cut off by the drain
deadline, a crash, a refused token — ends in :meth:`EntryBook.acked` or :meth:`EntryBook.let_go`,
so neither holds nor budget can leak. The coalescer, the worker and the property tests all use
this one object; it does no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["Counts", "EntryBook", "MemoryBudget", "merge_counts"]

# (resourceGroup, executionId) → progress counter deltas (progress.py)
Counts = dict[tuple[str, str], dict[str, int]]


def merge_counts(into: Counts, key: tuple[str, str], fields: Mapping[str, int]) -> None:
    target = into.setdefault(key, {})
    for name, amount in fields.items():
        if amount:
            target[name] = target.get(name, 0) + amount


class MemoryBudget:
    """Bytes of stream entries held until acknowledged, shared by the shards of one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.room = asyncio.Event()  # set whenever bytes were given back below the limit

    @property
    def spent(self) -> bool:
        return self.held >= self.limit

    def take(self, size: int) -> None:
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        if self.held < self.limit:
            self.room.set()


@dataclass(slots=True)
class _Entry:
    size: int
    deliveries: int  # as Redis counted them when this worker got the entry
    holds: int = 0
    counts: Counts | None = field(default=None)


class EntryBook:
    """Every entry one worker holds. ``budget`` may be shared with other books (shards)."""

    def __init__(self, budget: MemoryBudget | None = None) -> None:
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self._entries: dict[str, _Entry] = {}
        self.bytes = 0  # this book's share of the budget

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def ids(self) -> list[str]:
        return list(self._entries)

    def admit(self, entry_id: str, size: int, deliveries: int = 1) -> bool:
        """Take a newly read or claimed entry; False (and nothing changes) if already held."""
        if entry_id in self._entries:
            return False
        self._entries[entry_id] = _Entry(size, deliveries)
        self.bytes += size
        self.budget.take(size)
        return True

    def hold(self, entry_id: str, count: int = 1) -> None:
        """One more holder (a body, a dead letter, the intake) of the entry's items."""
        entry = self._entries.get(entry_id)
        if entry is None:  # the coalescer on its own (tests, replay) holds what it never read
            entry = self._entries[entry_id] = _Entry(0, 0)
        entry.holds += count

    def release(self, ids: Iterable[str]) -> list[str]:
        """Drop one hold of each id; return those that now have none, in the given order.
        They stay in the book, counted against the budget, until :meth:`acked`."""
        done: list[str] = []
        entries = self._entries
        for entry_id in ids:
            entry = entries[entry_id]  # KeyError: a release without a hold is a bug, say so
            if entry.holds < 1:
                raise KeyError(entry_id)
            entry.holds -= 1
            if not entry.holds:
                done.append(entry_id)
        return done

    def add_counts(self, entry_id: str, key: tuple[str, str], fields: Mapping[str, int]) -> None:
        """Progress counts that are written with this entry's acknowledgement, in the same
        script: so they are counted once, and only by the worker that acknowledges it."""
        entry = self._entries[entry_id]
        if entry.counts is None:
            entry.counts = {}
        merge_counts(entry.counts, key, fields)

    def counts_of(self, ids: Iterable[str]) -> Counts:
        """The progress counts riding with ``ids`` (done entries about to be acknowledged)."""
        total: Counts = {}
        entries = self._entries
        for entry_id in ids:
            counts = entries[entry_id].counts
            if counts:  # most entries carry none: their items were all delivered in one body
                for key, fields in counts.items():
                    merge_counts(total, key, fields)
        return total

    def acked(self, ids: Iterable[str]) -> None:
        """The ids' acknowledgement is written: forget them, give their bytes back."""
        given = 0
        for entry_id in ids:
            entry = self._entries.pop(entry_id, None)
            if entry is not None:
                given += entry.size
        self._give(given)

    def let_go(self) -> dict[str, int]:
        """Forget every entry without acknowledging it (it stays pending in Redis for the next
        owner) and give every byte back; returns each id with its delivery count as this worker
        got it, so a clean let-go can tell Redis that this delivery did not fail."""
        deliveries = {entry_id: entry.deliveries for entry_id, entry in self._entries.items()}
        self._entries.clear()
        self._give(self.bytes)
        return deliveries

    def _give(self, size: int) -> None:
        if size:
            self.bytes -= size
            self.budget.give(size)
