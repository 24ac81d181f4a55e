"""Every Redis key name metricrelay uses, derived from one prefix: no key literal anywhere else.

With one shard (the default) the event stream is ``<prefix>:events`` as CONTRACT.md §2.1 says.
With ``shards = N > 1`` it is N streams ``<prefix>:events:{<i>of<N>}``, i = 0 … N-1: the part in
braces is a Redis Cluster hash tag, so each shard lives in one slot, its dead-letter stream,
progress hashes and lease beside it, and shards spread over the cluster's nodes. The shard count
is part of the name, so two layouts (before and after a change of N) never share a stream.

A fragment goes to shard ``crc32(f"{resourceGroup}:{executionId}") mod N`` (zlib's CRC-32,
unsigned, of the UTF-8 bytes; execution ids cannot contain ':'), so one execution always lands in
one shard and keeps its order.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CONSUMER_GROUP",
    "DEFAULT_PREFIX",
    "MAX_SHARDS",
    "Keys",
    "ShardKeys",
    "StreamKind",
    "any_layout_match",
    "format_shard_list",
    "parse_shard_list",
    "shard_index",
    "stream_kind",
]

DEFAULT_PREFIX: Final = "metricrelay"
# CONTRACT.md §2.1 names the group `metricrelay` whatever the prefix: outside tools (XINFO,
# XPENDING dashboards) look for that name, and two prefixes never share a stream anyway.
CONSUMER_GROUP: Final = "metricrelay"
MAX_SHARDS: Final = 1024

StreamKind = Literal["events", "dead"]  # the two streams of a shard
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


def _check_part(what: str, value: str) -> None:
    # Whitespace would make keys awkward to quote in redis-cli and in scripts.
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"{what} must be non-empty and free of whitespace, got {value!r}")


def shard_index(resource_group: str, execution_id: str, shards: int) -> int:
    """The shard of an execution: stable across processes, hosts and languages."""
    if shards == 1:
        return 0
    return zlib.crc32(f"{resource_group}:{execution_id}".encode()) % shards


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard: its event stream and everything that must share its slot."""

    prefix: str
    index: int = 0
    count: int = 1

    @property
    def tag(self) -> str:
        """The hash tag (with braces) that puts a key in this shard's slot. One shard keeps the
        CONTRACT's untagged stream name, and a tag of that whole name hashes to the same slot."""
        if self.count == 1:
            return f"{{{self.prefix}:events}}"
        return f"{{{self.index}of{self.count}}}"

    @property
    def name(self) -> str:
        """How messages and `status` name the shard."""
        return "events" if self.count == 1 else f"{self.index}of{self.count}"

    @property
    def events(self) -> str:
        """The event stream producers XADD to (CONTRACT.md §2.1)."""
        return self.stream("events")

    @property
    def dead(self) -> str:
        """The dead-letter stream of this shard (CONTRACT.md §2.2)."""
        return self.stream("dead")

    def stream(self, kind: StreamKind) -> str:
        """:attr:`events` or :attr:`dead`, by kind."""
        if self.count == 1:
            return f"{self.prefix}:{kind}"
        return f"{self.prefix}:{kind}:{self.tag}"

    @property
    def group(self) -> str:
        """The consumer group on :attr:`events`; the same for every prefix and shard."""
        return CONSUMER_GROUP

    @property
    def lease(self) -> str:
        """Which worker owns this shard (sharded layouts only; see leases.py)."""
        return f"{self.prefix}:lease:{self.tag}"

    def dead_mark(self, identity: str) -> str:
        """Set (for an hour) once the dead letter ``identity`` is written, so that it is written
        once (deadletter.py); in the shard's slot, beside the dead-letter stream."""
        return f"{self.prefix}:deadmark:{self.tag}:{identity}"

    def progress(self, resource_group: str, execution_id: str) -> str:
        """The hash that records delivery progress of one execution; in the shard's slot, so
        that it is raised in the same transaction as the XACK.

        Execution ids cannot contain ':' (CONTRACT.md: ``^[\\w.-]{4,64}$``), so splitting such a
        key at its last ':' gives the execution back even for a resource group that contains one.
        """
        _check_part("resource_group", resource_group)
        _check_part("execution_id", execution_id)
        return f"{self.prefix}:progress:{self.tag}:{resource_group}:{execution_id}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout for one prefix and shard count, e.g.
    ``Keys().events == "metricrelay:events"``, ``Keys(shards=4).shard(1).events ==
    "metricrelay:events:{1of4}"``."""

    prefix: str = DEFAULT_PREFIX
    shards: int = 1

    def __post_init__(self) -> None:
        _check_part("the key prefix", self.prefix)
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"the key prefix must not contain braces, got {self.prefix!r}")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(f"the shard count must be 1 to {MAX_SHARDS}, got {self.shards}")

    def shard(self, index: int) -> ShardKeys:
        if not 0 <= index < self.shards:
            raise ValueError(f"shard {index} does not exist (there are {self.shards})")
        return ShardKeys(self.prefix, index, self.shards)

    def all_shards(self) -> list[ShardKeys]:
        return [ShardKeys(self.prefix, index, self.shards) for index in range(self.shards)]

    def route(self, resource_group: str, execution_id: str) -> ShardKeys:
        """The shard an execution's fragments go to."""
        return ShardKeys(
            self.prefix, shard_index(resource_group, execution_id, self.shards), self.shards
        )

    @property
    def workers(self) -> str:
        """The sorted set of live workers (member: consumer name, score: last beat, ms)."""
        return f"{self.prefix}:workers"

    def workers_of(self, pool: str = "") -> str:
        """The live workers of one pool (workers limited to some shards, named by their shard
        list), or :attr:`workers` for the pool of all shards (``""``)."""
        return f"{self.workers}:{pool}" if pool else self.workers

    @property
    def events_match(self) -> str:
        """The event stream with one shard; with more, a ``SCAN MATCH`` glob matching exactly
        this layout's event streams."""
        return self.streams_match("events")

    @property
    def dead_match(self) -> str:
        """As :attr:`events_match`, for the dead-letter streams."""
        return self.streams_match("dead")

    def streams_match(self, kind: StreamKind) -> str:
        """:attr:`events_match` or :attr:`dead_match`, by kind."""
        if self.shards == 1:
            return ShardKeys(self.prefix).stream(kind)
        # '{' is not special in a glob: only the shard index is left open
        return f"{self.prefix}:{kind}:{{*of{self.shards}}}"

    @property
    def refusals(self) -> str:
        """A counter of the 429s the API answered to any worker of this prefix: each worker
        adds its own and reads the others' (relay/refusals.py)."""
        return f"{self.prefix}:refusals"

    @property
    def replay_lock(self) -> str:
        """Held by the one ``replay`` or ``dead purge`` changing dead letters (value: who)."""
        return f"{self.prefix}:replay:lock"

    # The single-shard names, for code and tools that know there is one shard.

    def _only(self) -> ShardKeys:
        if self.shards != 1:
            raise ValueError(
                f"there are {self.shards} shards: name one (Keys.shard) or route (Keys.route)"
            )
        return ShardKeys(self.prefix)

    @property
    def events(self) -> str:
        return self._only().events

    @property
    def dead(self) -> str:
        return self._only().dead

    @property
    def group(self) -> str:
        return CONSUMER_GROUP

    def progress(self, resource_group: str, execution_id: str) -> str:
        return self._only().progress(resource_group, execution_id)

    def dead_mark(self, identity: str) -> str:
        return self._only().dead_mark(identity)


def any_layout_match(prefix: str, kind: StreamKind) -> str:
    """A ``SCAN MATCH`` glob for the ``kind`` streams of ``prefix`` in every shard layout; it
    may match more (``<prefix>:events-old``): :func:`stream_kind` tells which are streams."""
    literal = _GLOB_SPECIAL.sub(r"\\\1", prefix)
    return f"{literal}:{kind}*"


def stream_kind(prefix: str, key: str) -> StreamKind | None:
    """``"events"`` or ``"dead"`` when ``key`` names that stream of a shard of ``prefix`` in
    some shard layout (:meth:`ShardKeys.stream`); None when it names no such stream."""
    found = re.fullmatch(rf"{re.escape(prefix)}:(events|dead)(?::\{{\d+of\d+\}})?", key)
    if found is None:
        return None
    return "events" if found.group(1) == "events" else "dead"


def format_shard_list(indices: list[int]) -> str:
    """``[0, 1, 2, 3, 7]`` → ``"0-3,7"``: one spelling for one set of shards."""
    parts: list[str] = []
    for index in sorted(set(indices)):
        if parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == index - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        elif parts and "-" not in parts[-1] and int(parts[-1]) == index - 1:
            parts[-1] = f"{parts[-1]}-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts)


def parse_shard_list(text: str, shards: int) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; ValueError for anything outside ``0 … shards-1``."""
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"shard list {text!r}: {part.strip()!r} is not N or N-M") from None
        if not 0 <= low <= high < shards:
            raise ValueError(
                f"shard list {text!r}: {part.strip()!r} is outside 0-{shards - 1} "
                f"(there are {shards} shards)"
            )
        chosen.update(range(low, high + 1))
    return sorted(chosen)
