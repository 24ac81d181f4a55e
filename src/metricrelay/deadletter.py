"""The dead-letter stream (CONTRACT.md §2.2): what could not be delivered, why, and whence."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from metricrelay.keys import Keys, ShardKeys
from metricrelay.timestamps import format_utc

__all__ = ["DeadLetter", "Reason", "read_dead_letters", "write_dead_letters"]


class Reason(StrEnum):
    INVALID = "invalid"
    REJECTED = "rejected"
    TOO_LARGE = "too_large"
    EXHAUSTED = "exhausted"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter entry. ``resource`` is a fragment as JSON, or raw bytes that were not."""

    resource: bytes
    reason: Reason
    error: str
    source_ids: Sequence[str]
    status: int | None = None
    attempts: int = 0
    failed_at: str = ""

    def fields(self) -> dict[str, bytes | str | int]:
        return {
            "resource": self.resource,
            "reason": self.reason.value,
            "error": self.error,
            "status": "" if self.status is None else str(self.status),
            "source_ids": ",".join(self.source_ids),
            "attempts": self.attempts,
            "failed_at": self.failed_at or format_utc(datetime.now(UTC)),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> DeadLetter:
        status = fields.get(b"status", b"")
        ids = fields.get(b"source_ids", b"").decode()
        return cls(
            resource=fields.get(b"resource", b""),
            reason=Reason(fields.get(b"reason", b"invalid").decode()),
            error=fields.get(b"error", b"").decode(errors="replace"),
            source_ids=ids.split(",") if ids else [],
            status=int(status) if status else None,
            attempts=int(fields.get(b"attempts", b"0") or 0),
            failed_at=fields.get(b"failed_at", b"").decode(),
        )


async def write_dead_letters(
    redis: Any, keys: Keys | ShardKeys, letters: Iterable[DeadLetter]
) -> int:
    """Append every letter in one round trip; only after this returns may sources be acked."""
    pipe = redis.pipeline(transaction=False)
    count = 0
    for letter in letters:
        pipe.xadd(keys.dead, letter.fields())
        count += 1
    if count:
        await pipe.execute()
    return count


async def read_dead_letters(
    redis: Any, keys: Keys | ShardKeys, start: str = "-", end: str = "+", count: int | None = None
) -> list[tuple[str, DeadLetter]]:
    """Dead letters in stream order, with their ids in the dead-letter stream."""
    rows = await redis.xrange(keys.dead, start, end, count=count)
    return [(_text(entry_id), DeadLetter.from_fields(fields)) for entry_id, fields in rows]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
