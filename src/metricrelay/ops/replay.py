"""Replay: dead letters revalidated, re-packed under today's limits, and moved back for delivery.

For each matching dead letter, in stream order: decode it as the worker would, pack its valid
items with the coalescer under today's limits (so a ``too_large`` body is re-split into
fragments that each fit), then in one MULTI/EXEC append the fragments to the event stream and a
new dead letter for each part that is still invalid; only then XDEL the original. A crash
between the two steps leaves the original in place beside its replacements: nothing is lost,
and a second replay duplicates at most that one letter. A letter that would come back unchanged
(same reason, same bytes, nothing valid) is left where it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from metricrelay.batching import Coalescer, Limits
from metricrelay.codec import decode_entry
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys
from metricrelay.ops.dead import DeadFilter, DeadRecord, DeadScan, id_key

__all__ = ["ReplayPlan", "ReplaySummary", "plan_letter", "replay"]

log = logging.getLogger(__name__)

# The coalescer's ledger wants a source id per item; every item of a plan has the same origin.
_SOURCE: Final = "replay"


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What becomes of one dead letter: fragments to append, parts that stay dead."""

    record: DeadRecord
    fragments: list[bytes]
    items: int
    still_dead: list[DeadLetter]

    @property
    def unchanged(self) -> bool:
        """Nothing to move and the one remaining letter is the original: leave it in place."""
        if self.fragments or len(self.still_dead) != 1:
            return False
        again, original = self.still_dead[0], self.record.letter
        return again.reason == original.reason and again.resource == original.resource


@dataclass(slots=True)
class ReplaySummary:
    """Counts of one replay run (``dry_run``: what would have happened)."""

    dry_run: bool
    examined: int = 0
    matched: int = 0
    moved: int = 0  # dead letters removed after their replacements were appended
    fragments: int = 0  # entries appended to the event stream
    items: int = 0  # metrics, tags and customInfo in those entries
    redead: int = 0  # new dead letters for parts that are still invalid
    unchanged: int = 0
    unreadable: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "examined": self.examined,
            "matched": self.matched,
            "moved": self.moved,
            "fragments": self.fragments,
            "items": self.items,
            "redead": self.redead,
            "unchanged": self.unchanged,
            "unreadable": self.unreadable,
        }


def _entry_ms(record: DeadRecord) -> int:
    """The original event time: metrics without a timestamp get it, as on first delivery."""
    for source in record.letter.source_ids:
        try:
            return id_key(source)[0]
        except ValueError:
            continue
    return id_key(record.id)[0]


def _redead(record: DeadRecord, resource: bytes, error: str, failed_at: str) -> DeadLetter:
    original = record.letter
    note = f"{error} (replay of dead letter {record.id}, first dead as {original.reason.value})"
    return DeadLetter(
        resource,
        Reason.INVALID,
        note,
        original.source_ids,
        attempts=original.attempts,
        failed_at=failed_at,
    )


def plan_letter(
    record: DeadRecord, *, limits: Limits, default_resource_group: str, failed_at: str
) -> ReplayPlan:
    """Revalidate and re-pack one dead letter; pure (``failed_at`` stamps new dead letters)."""
    decoded = decode_entry(
        record.letter.resource,
        entry_ms=_entry_ms(record),
        default_resource_group=default_resource_group,
    )
    if decoded.fragment is None and len(decoded.problems) == 1:
        problem = decoded.problems[0]
        if problem.resource == record.letter.resource and record.letter.reason is Reason.INVALID:
            # invalid as a whole, as before: the original letter is the right one to keep
            return ReplayPlan(record, [], 0, [record.letter])
    still_dead = [
        _redead(record, problem.resource, problem.message, failed_at)
        for problem in decoded.problems
    ]
    fragments: list[bytes] = []
    items = 0
    if decoded.fragment is not None:
        coalescer = Coalescer(limits)
        coalescer.add(_SOURCE, decoded.fragment, now=0.0)
        for rejected in coalescer.take_rejected():
            still_dead.append(_redead(record, rejected.resource(), rejected.reason, failed_at))
        for body in coalescer.flush():
            fragments.append(body.resource())
            items += body.item_count
    return ReplayPlan(record, fragments, items, still_dead)


async def _apply(
    redis: Any, keys: Keys, plan: ReplayPlan, after_append: Callable[[ReplayPlan], None] | None
) -> None:
    # One transaction: a crash cannot leave half of a letter's replacements appended.
    pipe = redis.pipeline(transaction=True)
    for fragment in plan.fragments:
        pipe.xadd(keys.events, {"resource": fragment})
    for letter in plan.still_dead:
        pipe.xadd(keys.dead, letter.fields())
    await pipe.execute()
    if after_append is not None:
        after_append(plan)  # the crash point tests inject, between append and delete
    if not await redis.xdel(keys.dead, plan.record.id):
        log.warning("dead letter %s was already gone (another replay or purge?)", plan.record.id)


async def replay(
    redis: Any,
    keys: Keys,
    flt: DeadFilter,
    *,
    limits: Limits,
    default_resource_group: str,
    failed_at: str,
    dry_run: bool = False,
    on_examined: Callable[[], None] | None = None,
    on_plan: Callable[[ReplayPlan], None] | None = None,
    after_append: Callable[[ReplayPlan], None] | None = None,
) -> ReplaySummary:
    """Replay every dead letter ``flt`` selects; see the module docstring for the guarantees."""
    summary = ReplaySummary(dry_run)
    scan = DeadScan(redis, keys, flt, on_examined=on_examined)
    async for record in scan.records():
        plan = plan_letter(
            record,
            limits=limits,
            default_resource_group=default_resource_group,
            failed_at=failed_at,
        )
        if plan.unchanged:
            summary.unchanged += 1
        else:
            if not dry_run:
                await _apply(redis, keys, plan, after_append)
            summary.moved += 1
            summary.fragments += len(plan.fragments)
            summary.items += plan.items
            summary.redead += len(plan.still_dead)
        if on_plan is not None:
            on_plan(plan)
    summary.examined, summary.matched = scan.examined, scan.matched
    summary.unreadable = scan.unreadable
    # debug: the command prints this summary itself, after its progress bar has closed
    log.debug("replay: %s", summary.as_json())
    return summary
