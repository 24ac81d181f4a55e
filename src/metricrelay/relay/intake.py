"""What a worker makes of one stream entry before coalescing: its fragment, its invalid items as
dead letters, and whether its producer routed it to the right shard."""

from __future__ import annotations

import logging
from collections.abc import Callable

from metricrelay.codec import EncodedFragment, decode_entry, whole_fragment
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import ShardKeys, shard_index
from metricrelay.relay.stream import Entry

__all__ = ["RouteCheck", "decode"]

log = logging.getLogger(__name__)

_REPORTED_AT_MOST = 1000  # executions named in the log; the counter counts every entry


def decode(
    entry: Entry, default_resource_group: str
) -> tuple[EncodedFragment | None, list[DeadLetter]]:
    """The entry's valid items (None if nothing of it is usable) and a dead letter per problem,
    for an entry the C recogniser did not take (the worker tries it first, inline)."""
    if entry.resource is None:
        return None, [DeadLetter(b"", Reason.INVALID, "entry has no 'resource' field", [entry.id])]
    fragment = whole_fragment(entry.resource, default_resource_group, scanned=True)
    if fragment is not None:
        return fragment, []
    decoded = decode_entry(
        entry.resource,
        entry_ms=entry.ms,
        default_resource_group=default_resource_group,
    )
    invalid = [
        DeadLetter(p.resource, Reason.INVALID, p.message, [entry.id]) for p in decoded.problems
    ]
    return decoded.fragment, invalid


class RouteCheck:
    """Counts (and reports once per execution) entries their producer put in the wrong shard:
    they are delivered all the same, but their order against the execution's other entries,
    read from another shard, is not kept."""

    def __init__(self, shard: ShardKeys, on_misrouted: Callable[[], None]) -> None:
        self.shard = shard
        self.on_misrouted = on_misrouted
        self._reported: set[tuple[str, str]] = set()

    def __call__(self, resource_group: str, execution_id: str) -> None:
        shard = self.shard
        right = shard_index(resource_group, execution_id, shard.count)
        if right == shard.index:
            return
        self.on_misrouted()
        key = (resource_group, execution_id)
        if key in self._reported or len(self._reported) >= _REPORTED_AT_MOST:
            return
        self._reported.add(key)
        log.warning(
            "execution %s/%s has entries in shard %s, but routes to shard %dof%d: its producer "
            "does not follow the routing rule (README), so its order is not kept",
            resource_group,
            execution_id,
            shard.name,
            right,
            shard.count,
        )
