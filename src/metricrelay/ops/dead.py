"""Dead-letter filters, a bounded chunked scan of the dead-letter streams, summaries and purge.

Dead-letter ids are unique only within one stream. With more than one dead stream in play
(``METRICRELAY_SHARDS`` > 1, or a layout being drained) a letter is named ``<shard>/<id>``, e.g.
``3of8/1700000000000-0`` (:func:`parse_ref`); with one stream, by its plain id as always.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from metricrelay import timestamps
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys, ShardKeys
from metricrelay.replies import MAX_SEQ, as_text, id_key

__all__ = [
    "DeadFilter",
    "DeadRecord",
    "DeadScan",
    "ResourceInfo",
    "fetch",
    "inspect_resource",
    "parse_bound",
    "parse_ref",
    "purge",
    "purge_refs",
    "record_json",
]

log = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Dead letters can be whole 4 MiB bodies: a small chunk keeps one read's memory bounded.
DEFAULT_CHUNK: Final = 50


def parse_bound(text: str, *, upper: bool) -> str:
    """An inclusive XRANGE bound from a stream id or an RFC 3339 time (with an offset).

    Times have the resolution of stream ids, milliseconds: ``--until 12:00:00.123456Z`` keeps
    every entry of millisecond ``.123``.
    """
    text = text.strip()
    try:
        id_key(text)
    except ValueError:
        return _time_bound(text, upper=upper)
    # Redis reads an end id without a sequence as that millisecond's last entry already
    return text if upper or "-" in text else f"{text}-0"


def _time_bound(text: str, *, upper: bool) -> str:
    try:
        canonical = timestamps.normalize(text)
    except timestamps.TimestampError as exc:
        raise ValueError(
            f"{text!r} is neither a stream id (1700000000000-0) nor an RFC 3339 time ({exc})"
        ) from None
    moment = datetime.fromisoformat(canonical.replace("Z", "+00:00"))
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    return f"{ms}-{MAX_SEQ}" if upper else f"{ms}-0"


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """What a dead letter's ``resource`` says about itself (None where it does not say)."""

    resource_group: str | None
    execution_id: str | None
    metrics: int
    tags: int
    custom_info: int
    is_json: bool


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def inspect_resource(resource: bytes) -> ResourceInfo:
    """Parse leniently: raw bytes that were never JSON are a legitimate dead letter too."""
    try:
        document = orjson.loads(resource)
    except orjson.JSONDecodeError:
        return ResourceInfo(None, None, 0, 0, 0, is_json=False)
    if not isinstance(document, dict):
        return ResourceInfo(None, None, 0, 0, 0, is_json=True)
    group, execution = document.get("resourceGroup"), document.get("executionId")
    return ResourceInfo(
        group if isinstance(group, str) else None,
        execution if isinstance(execution, str) else None,
        _length(document.get("metrics")),
        _length(document.get("tags")),
        _length(document.get("customInfo")),
        is_json=True,
    )


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters a command acts on; empty ``reasons`` means every reason."""

    reasons: frozenset[Reason] = frozenset()
    execution: str | None = None
    start: str = "-"
    end: str = "+"
    limit: int | None = None

    def matches(self, letter: DeadLetter, info: ResourceInfo) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        return self.execution is None or info.execution_id == self.execution


StreamKeys = Keys | ShardKeys  # one event stream and its dead-letter stream


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead letter with its id in its dead-letter stream (``shard``'s, when known)."""

    id: str
    letter: DeadLetter
    info: ResourceInfo
    shard: ShardKeys | None = field(default=None, compare=False)
    qualified: bool = False  # several dead streams are in play: name it <shard>/<id>

    @property
    def ref(self) -> str:
        """How commands show the letter and accept it back (:func:`parse_ref`)."""
        if self.qualified and self.shard is not None:
            return f"{self.shard.name}/{self.id}"
        return self.id


def _as_shard(keys: StreamKeys) -> ShardKeys:
    if isinstance(keys, ShardKeys):
        return keys
    keys.dead  # noqa: B018 - raises ValueError for a sharded layout: name a shard instead
    return keys.shard(0)


class DeadScan:
    """Matching dead letters, one dead-letter stream after the other, each in stream order,
    read ``chunk`` at a time; ``flt.limit`` counts over all of them.

    Streams are read one after the other, not merged by time, so memory stays one chunk however
    many shards there are. Each stream's scan stops at the last entry that existed when the
    scan began (all ends are read first), so what a replay appends to any dead-letter stream
    while it runs is never read back (no endless loop, no letter replayed twice).
    """

    def __init__(
        self,
        redis: Any,
        keys: StreamKeys | Sequence[ShardKeys],
        flt: DeadFilter,
        *,
        chunk: int = DEFAULT_CHUNK,
        on_examined: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.shards = [_as_shard(keys)] if isinstance(keys, Keys | ShardKeys) else list(keys)
        self.qualified = len(self.shards) > 1
        self.filter = flt
        self.chunk = chunk
        self.on_examined = on_examined
        self.examined = 0
        self.matched = 0
        self.unreadable = 0

    async def _end(self, shard: ShardKeys) -> str | None:
        newest = await self.redis.xrevrange(shard.dead, "+", "-", count=1)
        if not newest:
            return None
        last = as_text(newest[0][0])
        wanted = self.filter.end
        if wanted != "+" and id_key(wanted, upper=True) < id_key(last):
            return wanted
        return last

    def _full(self) -> bool:
        return self.filter.limit is not None and self.matched >= self.filter.limit

    async def records(self) -> AsyncIterator[DeadRecord]:
        if self.filter.limit == 0:
            return
        ends = [(shard, await self._end(shard)) for shard in self.shards]
        for shard, end in ends:
            if end is None:
                continue
            async for record in self._stream(shard, end):
                yield record
                if self._full():
                    return

    async def _stream(self, shard: ShardKeys, end: str) -> AsyncIterator[DeadRecord]:
        start = self.filter.start
        while True:
            rows = await self.redis.xrange(shard.dead, start, end, count=self.chunk)
            for raw_id, fields in rows:
                record = self._record(shard, as_text(raw_id), fields)
                if record is not None and self.filter.matches(record.letter, record.info):
                    self.matched += 1
                    yield record
                    if self._full():
                        return
            if len(rows) < self.chunk:
                return
            start = "(" + as_text(rows[-1][0])

    def _record(
        self, shard: ShardKeys, dead_id: str, fields: dict[bytes, bytes]
    ) -> DeadRecord | None:
        self.examined += 1
        if self.on_examined is not None:
            self.on_examined()
        name = f"{shard.name}/{dead_id}" if self.qualified else dead_id
        try:
            letter = DeadLetter.from_fields(fields)
        except ValueError as exc:  # written by something else than metricrelay: leave it be
            self.unreadable += 1
            log.warning("dead letter %s is unreadable and skipped: %s", name, exc)
            return None
        info = inspect_resource(letter.resource)
        return DeadRecord(dead_id, letter, info, shard, self.qualified)


def parse_ref(text: str, shards: Sequence[ShardKeys]) -> tuple[ShardKeys, str]:
    """``<shard>/<id>`` (or a plain id when ``shards`` is one stream) → (shard, id).

    A plain id among several streams is refused rather than looked up everywhere: ids are
    unique only per stream, so a guess could show or delete the wrong letter.
    """
    name, slash, dead_id = text.strip().rpartition("/")
    if not slash:
        if len(shards) != 1:
            examples = ", ".join(s.name for s in shards[:3])
            raise ValueError(
                f"{text!r}: there are {len(shards)} dead-letter streams; name the shard as "
                f"<shard>/<id>, e.g. {shards[0].name}/{text.strip()} (shards: {examples}, …)"
            )
        return shards[0], _full_id(dead_id)
    for shard in shards:
        if shard.name == name:
            return shard, _full_id(dead_id)
    raise ValueError(f"{text!r}: no shard {name!r} in play")


def _full_id(dead_id: str) -> str:
    """``<ms>-<seq>``, ``-0`` added to a bare millisecond: XRANGE of ``1000`` would cover the
    whole millisecond while XDEL of ``1000`` means ``1000-0``, so show and purge must agree."""
    ms, seq = id_key(dead_id)
    return f"{ms}-{seq}"


async def fetch(
    redis: Any, keys: StreamKeys, dead_id: str, *, qualified: bool = False
) -> DeadRecord | None:
    """One dead letter by its id in ``keys``' dead-letter stream, or None when there is none."""
    id_key(dead_id)
    shard = _as_shard(keys)
    rows = await redis.xrange(shard.dead, dead_id, dead_id, count=1)
    if not rows:
        return None
    letter = DeadLetter.from_fields(rows[0][1])
    return DeadRecord(dead_id, letter, inspect_resource(letter.resource), shard, qualified)


async def purge(redis: Any, keys: StreamKeys, ids: Sequence[str], chunk: int = 500) -> int:
    """XDEL these dead letters; returns how many existed and are now gone."""
    dead = _as_shard(keys).dead
    deleted = 0
    for start in range(0, len(ids), chunk):
        deleted += int(await redis.xdel(dead, *ids[start : start + chunk]))
    return deleted


async def purge_refs(redis: Any, refs: Sequence[tuple[ShardKeys, str]]) -> int:
    """XDEL letters of several dead-letter streams (one XDEL per stream and chunk: a cluster
    refuses a command whose keys live in different slots)."""
    by_shard: dict[ShardKeys, list[str]] = {}
    for shard, dead_id in refs:
        by_shard.setdefault(shard, []).append(dead_id)
    deleted = 0
    for shard, ids in by_shard.items():
        deleted += await purge(redis, shard, ids)
    return deleted


def record_json(record: DeadRecord, *, with_resource: bool = False) -> dict[str, Any]:
    """The documented JSON form of a dead letter (``dead list --json`` / ``dead show --json``)."""
    letter, info = record.letter, record.info
    out: dict[str, Any] = {
        "id": record.ref,
        "failed_at": letter.failed_at,
        "reason": letter.reason.value,
        "status": letter.status,
        "attempts": letter.attempts,
        "resource_group": info.resource_group,
        "execution_id": info.execution_id,
        "items": {"metrics": info.metrics, "tags": info.tags, "customInfo": info.custom_info},
        "resource_bytes": len(letter.resource),
        "source_ids": list(letter.source_ids),
        "error": letter.error,
    }
    if record.qualified and record.shard is not None:
        out["shard"] = record.shard.name
        out["stream_id"] = record.id
    if with_resource:
        out["resource_is_json"] = info.is_json
        out["resource"] = (
            orjson.loads(letter.resource)
            if info.is_json
            else letter.resource.decode(errors="replace")
        )
    return out
