"""Dead-letter filters, a bounded chunked scan of the dead-letter stream, summaries and purge."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from metricrelay import timestamps
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys

__all__ = [
    "DeadFilter",
    "DeadRecord",
    "DeadScan",
    "ResourceInfo",
    "fetch",
    "id_key",
    "inspect_resource",
    "parse_bound",
    "purge",
    "record_json",
]

log = logging.getLogger(__name__)

_ID: Final = re.compile(r"(\d+)(?:-(\d+))?\Z")
_MAX_SEQ: Final = 2**64 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Dead letters can be whole 4 MiB bodies: a small chunk keeps one read's memory bounded.
DEFAULT_CHUNK: Final = 50


def id_key(entry_id: str, *, upper: bool = False) -> tuple[int, int]:
    """A stream id as a sortable pair; an id without a sequence means its ms's first (or last)."""
    match = _ID.match(entry_id)
    if match is None:
        raise ValueError(f"{entry_id!r} is not a stream id (milliseconds-sequence)")
    seq = match.group(2)
    return (int(match.group(1)), int(seq) if seq is not None else (_MAX_SEQ if upper else 0))


def parse_bound(text: str, *, upper: bool) -> str:
    """An inclusive XRANGE bound from a stream id or an RFC 3339 time (with an offset).

    Times have the resolution of stream ids, milliseconds: ``--until 12:00:00.123456Z`` keeps
    every entry of millisecond ``.123``.
    """
    text = text.strip()
    if _ID.match(text):
        # Redis reads an end id without a sequence as that millisecond's last entry already
        return text if upper or "-" in text else f"{text}-0"
    try:
        canonical = timestamps.normalize(text)
    except timestamps.TimestampError as exc:
        raise ValueError(
            f"{text!r} is neither a stream id (1700000000000-0) nor an RFC 3339 time ({exc})"
        ) from None
    moment = datetime.fromisoformat(canonical.replace("Z", "+00:00"))
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    return f"{ms}-{_MAX_SEQ}" if upper else f"{ms}-0"


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


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead letter with its id in the dead-letter stream."""

    id: str
    letter: DeadLetter
    info: ResourceInfo


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DeadScan:
    """Matching dead letters in stream order, read ``chunk`` at a time.

    The scan stops at the last entry that existed when it began, so what a replay appends to
    the dead-letter stream while it runs is never read back (no endless loop).
    """

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        flt: DeadFilter,
        *,
        chunk: int = DEFAULT_CHUNK,
        on_examined: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.filter = flt
        self.chunk = chunk
        self.on_examined = on_examined
        self.examined = 0
        self.matched = 0
        self.unreadable = 0

    async def _end(self) -> str | None:
        newest = await self.redis.xrevrange(self.keys.dead, "+", "-", count=1)
        if not newest:
            return None
        last = _text(newest[0][0])
        wanted = self.filter.end
        if wanted != "+" and id_key(wanted, upper=True) < id_key(last):
            return wanted
        return last

    async def records(self) -> AsyncIterator[DeadRecord]:
        end = await self._end()
        if end is None or self.filter.limit == 0:
            return
        start = self.filter.start
        while True:
            rows = await self.redis.xrange(self.keys.dead, start, end, count=self.chunk)
            for raw_id, fields in rows:
                record = self._record(_text(raw_id), fields)
                if record is not None and self.filter.matches(record.letter, record.info):
                    self.matched += 1
                    yield record
                    if self.filter.limit is not None and self.matched >= self.filter.limit:
                        return
            if len(rows) < self.chunk:
                return
            start = "(" + _text(rows[-1][0])

    def _record(self, dead_id: str, fields: dict[bytes, bytes]) -> DeadRecord | None:
        self.examined += 1
        if self.on_examined is not None:
            self.on_examined()
        try:
            letter = DeadLetter.from_fields(fields)
        except ValueError as exc:  # written by something else than metricrelay: leave it be
            self.unreadable += 1
            log.warning("dead letter %s is unreadable and skipped: %s", dead_id, exc)
            return None
        return DeadRecord(dead_id, letter, inspect_resource(letter.resource))


async def fetch(redis: Any, keys: Keys, dead_id: str) -> DeadRecord | None:
    """One dead letter by its id, or None when there is none."""
    id_key(dead_id)
    rows = await redis.xrange(keys.dead, dead_id, dead_id, count=1)
    if not rows:
        return None
    letter = DeadLetter.from_fields(rows[0][1])
    return DeadRecord(dead_id, letter, inspect_resource(letter.resource))


async def purge(redis: Any, keys: Keys, ids: Sequence[str], chunk: int = 500) -> int:
    """XDEL these dead letters; returns how many existed and are now gone."""
    deleted = 0
    for start in range(0, len(ids), chunk):
        deleted += int(await redis.xdel(keys.dead, *ids[start : start + chunk]))
    return deleted


def record_json(record: DeadRecord, *, with_resource: bool = False) -> dict[str, Any]:
    """The documented JSON form of a dead letter (``dead list --json`` / ``dead show --json``)."""
    letter, info = record.letter, record.info
    out: dict[str, Any] = {
        "id": record.id,
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
    if with_resource:
        out["resource_is_json"] = info.is_json
        out["resource"] = (
            orjson.loads(letter.resource)
            if info.is_json
            else letter.resource.decode(errors="replace")
        )
    return out
