"""Per-execution delivery progress: what the worker publishes, and the producer's barrier.

The worker keeps a hash per execution (``keys.py``: ``<prefix>:progress:{<shard>}:<resourceGroup>:
<executionId>``) whose counters it raises in the same atomic script as the XACK that finishes a
body, so the counts and the
acknowledgements never disagree: ``points_accepted``, ``points_dead_<reason>`` and
``items_invalid``. The hash expires a week after its last change.

A producer's barrier does not need the counts to be exact per producer (several ranks share an
execution): it knows the ids of the entries it wrote, and waits until each of them is
acknowledged by the consumer group — that is, accepted by the API or dead-lettered. The counts
are then reported for the whole execution.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from metricrelay.keys import Keys, ShardKeys
from metricrelay.replies import as_text, id_key

__all__ = ["PROGRESS_TTL_S", "DeliveryReport", "ack_with_progress", "wait_delivered"]

PROGRESS_TTL_S: Final = 7 * 24 * 3600
_POLL_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What the worker reports for an execution once this producer's entries are all done."""

    entries: int
    totals: Mapping[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.totals.get("points_accepted", 0)

    @property
    def dead(self) -> dict[str, int]:
        prefix = "points_dead_"
        return {k[len(prefix) :]: v for k, v in self.totals.items() if k.startswith(prefix)}


# XACK and the counter increments as one script: atomic like MULTI/EXEC, and also on a Redis
# Cluster, where every key given is in the shard's slot (keys.py) and redis-py's cluster
# transactions are not usable from asyncio (they run each command on a thread of their own).
# KEYS: the stream, then the progress hashes. ARGV: group, TTL, the ids separated by spaces (one
# argument: packing a thousand arguments costs the client more than the script's split), then per
# hash the number of (field, amount) pairs and the pairs.
# Counts are raised only if this call acknowledged something: when a run's reply was lost and
# the script runs again, its ids are already acknowledged and the counts are not raised twice.
# (The worker sends counts only with the ids they belong to: entries.py.)
_ACK_AND_COUNT: Final = """
local ids = {}
for id in string.gmatch(ARGV[3], '%S+') do
  ids[#ids + 1] = id
end
local acked = 0
for first = 1, #ids, 1000 do
  local last = math.min(#ids, first + 999)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, first, last))
end
if acked == 0 then
  return 0
end
local at = 4
for k = 2, #KEYS do
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    redis.call('HINCRBY', KEYS[k], ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return acked
"""


async def ack_with_progress(
    redis: Any,
    keys: Keys | ShardKeys,
    ids: Sequence[str],
    counts: Mapping[tuple[str, str], Mapping[str, int]],
) -> int:
    """XACK ``ids`` and raise the per-execution counters in one atomic step; the count acked.

    The counters are raised only if some id was still pending: running this twice (a lost
    reply, retried) counts once."""
    if not ids:
        raise ValueError("progress counts travel with the acknowledgement of their entries")
    hashes: list[str] = []
    args: list[str | int] = [keys.group, PROGRESS_TTL_S, " ".join(ids)]
    for (group, execution), fields in counts.items():
        hashes.append(keys.progress(group, execution))
        raised = [(name, amount) for name, amount in fields.items() if amount]
        args.append(len(raised))
        for name, amount in raised:
            args += [name, amount]
    acked = await redis.eval(_ACK_AND_COUNT, 1 + len(hashes), keys.events, *hashes, *args)
    return int(acked)


async def _all_acknowledged(client: Any, keys: Keys | ShardKeys, ids: Sequence[str]) -> bool:
    """Every id delivered to the group at least once, and none of them pending any more."""
    try:
        groups = await client.xinfo_groups(keys.events)
    except Exception:  # no stream yet
        return False
    mine = [g for g in groups if as_text(g["name"]) == keys.group]
    if not mine:
        return False
    newest = max(ids, key=id_key)
    if id_key(as_text(mine[0]["last-delivered-id"])) < id_key(newest):
        return False
    wanted = set(ids)
    start, end = min(ids, key=id_key), newest
    while True:
        rows = await client.xpending_range(keys.events, keys.group, start, end, 1000)
        if any(as_text(row["message_id"]) in wanted for row in rows):
            return False
        if len(rows) < 1000:
            return True
        ms, seq = id_key(as_text(rows[-1]["message_id"]))
        start = f"{ms}-{seq + 1}"


async def wait_delivered(
    client: Any,
    keys: Keys | ShardKeys,
    resource_group: str,
    execution_id: str,
    ids: Sequence[str],
    *,
    timeout: float | None,
) -> DeliveryReport:
    """Wait until the worker has finished every entry in ``ids``; TimeoutError otherwise."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while ids and not await _all_acknowledged(client, keys, ids):
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{len(ids)} entries not yet delivered within {timeout}s")
        await asyncio.sleep(_POLL_S)  # another process does the work: poll, with a deadline
    raw = await client.hgetall(keys.progress(resource_group, execution_id))
    totals = {as_text(k): int(v) for k, v in raw.items()}
    return DeliveryReport(len(ids), totals)
