"""The dead-letter stream (CONTRACT.md §2.2): what could not be delivered, why, and whence."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from metricrelay.keys import Keys, ShardKeys
from metricrelay.replies import as_text
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

    def identity(self) -> str:
        """What makes two writes the same letter: its reason, sources and content (and, for an
        invalid item, its error, which names the item's place in its entry)."""
        digest = hashlib.sha1(usedforsecurity=False)
        for part in (self.reason.value, ",".join(self.source_ids)):
            digest.update(part.encode() + b"\0")
        digest.update(self.resource)
        if self.reason is Reason.INVALID:
            digest.update(b"\0" + self.error.encode())
        return digest.hexdigest()

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


# Each letter is appended only if its mark could be set (SET NX EX): a write repeated after a lost
# reply or a refused part, or by the next owner of an entry whose acknowledgement never came,
# adds no second letter. Atomic: a full Redis refuses the first SET, and the script stops before
# it wrote anything. KEYS: the dead-letter stream, then one mark per letter (all in the shard's
# slot). ARGV: the marks' time to live, then per letter its field count and fields.
_WRITE_ONCE: Final = """
local at = 2
local written = 0
for k = 2, #KEYS do
  local n = tonumber(ARGV[at])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + n))
    written = written + 1
  end
  at = at + n + 1
end
return written
"""
# Long enough for any retry or hand-over of the entries a letter came from.
DEAD_MARK_TTL_S: Final = 3600


async def write_dead_letters(
    redis: Any, keys: Keys | ShardKeys, letters: Iterable[DeadLetter]
) -> int:
    """Append every letter not written before (within an hour), in one atomic script; only
    after this returns may sources be acked. Returns how many were appended."""
    marks: list[str] = []
    args: list[bytes | str | int] = [DEAD_MARK_TTL_S]
    for letter in letters:
        marks.append(keys.dead_mark(letter.identity()))
        fields = [part for pair in letter.fields().items() for part in pair]
        args += [len(fields), *fields]
    if not marks:
        return 0
    return int(await redis.eval(_WRITE_ONCE, 1 + len(marks), keys.dead, *marks, *args))


async def read_dead_letters(
    redis: Any, keys: Keys | ShardKeys, start: str = "-", end: str = "+", count: int | None = None
) -> list[tuple[str, DeadLetter]]:
    """Dead letters in stream order, with their ids in the dead-letter stream."""
    rows = await redis.xrange(keys.dead, start, end, count=count)
    return [(as_text(entry_id), DeadLetter.from_fields(fields)) for entry_id, fields in rows]
