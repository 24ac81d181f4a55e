"""Replay: dead letters revalidated, re-packed under today's limits, and moved back for delivery.

For each matching dead letter, in stream order: decode it as the worker would, pack its valid
items with the coalescer under today's limits (so a ``too_large`` body is re-split into
fragments that each fit), then in one MULTI/EXEC append the fragments to the event stream and a
new dead letter for each part that is still invalid; only then XDEL the original. A crash
between the two steps leaves the original in place beside its replacements: nothing is lost,
and a second replay duplicates at most that one letter. A letter that would come back unchanged
(same reason, same bytes, nothing valid) is left where it is.

Shards: letters are read from every dead-letter stream in play (``sources``: the current layout
and a layout being drained) and go to the shard the *current* layout routes their execution to;
the fragments and the new dead letters of one letter all go to that one shard, so the MULTI/EXEC
stays in one Redis Cluster slot. The XDEL goes to the stream the letter came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from metricrelay.codec import decode_entry
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys, ShardKeys
from metricrelay.ops.dead import DeadFilter, DeadRecord, DeadScan
from metricrelay.relay.batching import Coalescer, Limits
from metricrelay.replies import id_key

__all__ = ["ReplayPlan", "ReplaySummary", "destination", "plan_letter", "replay"]

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
    destination: ShardKeys | None = None  # where it goes; set by replay(), not plan_letter()

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


def destination(layout: Keys, record: DeadRecord, default_resource_group: str) -> ShardKeys:
    """The shard of ``layout`` a dead letter's replacements go to."""
    execution = record.info.execution_id
    if execution is not None:
        return layout.route(record.info.resource_group or default_resource_group, execution)
    # Unroutable (not JSON, or no executionId): nothing of it can reach the API, so only where
    # its new dead letter lands is at stake. It stays on its own shard when the layout is the
    # same (a replay changes nothing else about it), else shard 0 of today's layout: the old
    # layout is being drained and must end up empty.
    origin = record.shard
    if origin is not None and origin.count == layout.shards and origin.prefix == layout.prefix:
        return layout.shard(origin.index)
    return layout.shard(0)


# A letter's replacements in one atomic step, so that a crash cannot leave half of them appended:
# a script, whose keys (a shard's event and dead-letter streams) share the shard's slot (keys.py).
# KEYS: events, dead. ARGV: n, n fragments, then per new dead letter 2m and its m field/values.
_APPEND: Final = """
local n = tonumber(ARGV[1])
for i = 2, 1 + n do
  redis.call('XADD', KEYS[1], '*', 'resource', ARGV[i])
end
local at = 2 + n
while at <= #ARGV do
  local m = tonumber(ARGV[at])
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, at + 1, at + m))
  at = at + 1 + m
end
return n
"""


async def _append(redis: Any, target: ShardKeys, plan: ReplayPlan) -> None:
    if target.count == 1 and isinstance(redis, RedisCluster):
        # One shard on a cluster: its two streams are in different slots, so no single step
        # covers both. A crash in between repeats the fragments on the next replay (at least
        # once); nothing is lost, as the dead letter is deleted only after both.
        pipe: Any = redis.pipeline(transaction=False)
        for fragment in plan.fragments:
            pipe.xadd(target.events, {"resource": fragment})
        for letter in plan.still_dead:
            pipe.xadd(target.dead, letter.fields())
        await pipe.execute()
        return
    args: list[Any] = [len(plan.fragments), *plan.fragments]
    for letter in plan.still_dead:
        items = _flat(letter.fields())
        args += [len(items), *items]
    await redis.eval(_APPEND, 2, target.events, target.dead, *args)


def _flat(fields: Mapping[str, Any]) -> list[Any]:
    return [part for name, value in fields.items() for part in (name, value)]


async def _apply(
    redis: Any, plan: ReplayPlan, after_append: Callable[[ReplayPlan], None] | None
) -> None:
    record, target = plan.record, plan.destination
    if record.shard is None or target is None:  # pragma: no cover - replay() sets both
        raise ValueError("a plan to apply needs its source and destination shard")
    await _append(redis, target, plan)
    if after_append is not None:
        after_append(plan)  # the crash point tests inject, between append and delete
    # the letter's own stream, which may be another slot (or the old layout): a second command
    if not await redis.xdel(record.shard.dead, record.id):
        log.warning("dead letter %s was already gone (another replay or purge?)", record.ref)


async def replay(
    redis: Any,
    keys: Keys,
    flt: DeadFilter,
    *,
    limits: Limits,
    default_resource_group: str,
    failed_at: str,
    dry_run: bool = False,
    sources: Sequence[ShardKeys] | None = None,
    on_examined: Callable[[], None] | None = None,
    on_plan: Callable[[ReplayPlan], None] | None = None,
    after_append: Callable[[ReplayPlan], None] | None = None,
    guard: Callable[[], None] | None = None,
) -> ReplaySummary:
    """Replay every dead letter ``flt`` selects from the dead-letter streams of ``sources``
    (default: every shard of ``keys``) into ``keys``, the current layout; see the module
    docstring for the guarantees. ``guard`` is called before each change and stops the replay
    by raising (the replay lock's ``check``)."""
    summary = ReplaySummary(dry_run)
    streams = keys.all_shards() if sources is None else sources
    scan = DeadScan(redis, streams, flt, on_examined=on_examined)
    async for record in scan.records():
        plan = plan_letter(
            record,
            limits=limits,
            default_resource_group=default_resource_group,
            failed_at=failed_at,
        )
        plan = replace(plan, destination=destination(keys, record, default_resource_group))
        if plan.unchanged:
            summary.unchanged += 1
        else:
            if not dry_run:
                if guard is not None:
                    guard()
                await _apply(redis, plan, after_append)
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
