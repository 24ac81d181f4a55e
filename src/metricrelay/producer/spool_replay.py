"""Replaying spools that a process left behind (it died, or closed while Redis was away).

A leftover is taken over under its ``.lock`` (see :mod:`spool`): a live process's spool is
never touched. Its records are XADDed in order, in pipelined chunks, and the commit mark moves
after each chunk Redis took, so a crash of the replay repeats at most one chunk: records
replayed twice are the only duplicates. A torn last record is skipped and reported; a corrupt
record stops the replay of that spool, which stays on disk, reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from metricrelay.producer.spool import commit_path, lock_path
from metricrelay.producer.spool_format import Commit, Record, Scan, decode_commit, encode_commit
from metricrelay.producer.spool_format import read_records as _read_records

__all__ = ["Leftover", "Outcome", "claim", "find_leftovers", "replay", "summarize"]

# <execution>@<pid>-<8 hex>; spools of earlier versions had no random part
_SEGMENT: Final = re.compile(
    r"^(?P<name>(?P<execution>[\w.-]+)@(?P<pid>\d+)(?:-[0-9a-f]{8})?)\.(?P<n>\d{8})\.spool$"
)
CHUNK: Final = 500  # records per pipelined XADD and commit


@dataclass
class Leftover:
    """The files of one process's spool, segments in order."""

    directory: Path
    name: str
    execution_id: str
    segments: list[tuple[int, Path]] = field(default_factory=list)

    def commit(self) -> Commit:
        try:
            raw = commit_path(self.directory, self.name).read_bytes()
        except FileNotFoundError:
            return Commit()
        return decode_commit(raw) or Commit()


@dataclass
class Outcome:
    """What one replay (or a dry run) found: records and items, and what it could not read."""

    records: int = 0
    items: int = 0  # metrics, tags and customInfo
    ids: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # "path: N bytes" of skipped torn tails
    corrupt: list[str] = field(default_factory=list)  # spools a corrupt record stopped
    # executionId → [records, items], as the records say (a dry run's listing): an Emitter's
    # spool holds one execution, that of `metricrelay emit` any number
    executions: dict[str, list[int]] = field(default_factory=dict)

    def add(self, other: Outcome) -> None:
        self.records += other.records
        self.items += other.items
        self.ids += other.ids
        self.torn += other.torn
        self.corrupt += other.corrupt
        for execution, (records, items) in other.executions.items():
            self.count(execution, records, items)

    def count(self, execution: str, records: int, items: int) -> None:
        counts = self.executions.setdefault(execution, [0, 0])
        counts[0] += records
        counts[1] += items


def find_leftovers(directory: Path, execution_id: str | None = None) -> list[Leftover]:
    """Every spool in ``directory`` (of one execution if given), oldest first."""
    found: dict[str, Leftover] = {}
    if not directory.is_dir():
        return []
    for path in directory.iterdir():
        match = _SEGMENT.match(path.name)
        if match is None or (execution_id and match["execution"] != execution_id):
            continue
        leftover = found.setdefault(
            match["name"], Leftover(directory, match["name"], match["execution"])
        )
        leftover.segments.append((int(match["n"]), path))
    for leftover in found.values():
        leftover.segments.sort()
    return sorted(found.values(), key=_age)


def _age(leftover: Leftover) -> float:
    with contextlib.suppress(FileNotFoundError, IndexError):
        return leftover.segments[0][1].stat().st_mtime
    return 0.0


def _segments(leftover: Leftover) -> list[tuple[int, Path]]:
    """The segments of ``leftover`` on disk now, in order."""
    found = []
    for path in leftover.directory.glob(f"{glob.escape(leftover.name)}.*.spool"):
        match = _SEGMENT.match(path.name)
        if match is not None and match["name"] == leftover.name:
            found.append((int(match["n"]), path))
    return sorted(found)


@contextlib.contextmanager
def claim(leftover: Leftover) -> Iterator[bool]:
    """Hold the spool's lock for the block: True when taken, False when its process lives.
    Taken, ``leftover.segments`` are those on disk now: none when another replay, or the
    spool's own process, finished it since it was listed (a replay then only tidies up)."""
    fd = os.open(lock_path(leftover.directory, leftover.name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        leftover.segments = _segments(leftover)
        yield True
    finally:
        os.close(fd)


class _Sections(msgspec.Struct):
    """What a replay reports of a record: the items are counted, not decoded."""

    executionId: Any = None  # noqa: N815 (the wire's name)
    metrics: list[msgspec.Raw] | None = None
    tags: list[msgspec.Raw] | None = None
    customInfo: list[msgspec.Raw] | None = None  # noqa: N815


_SECTIONS: Final = msgspec.json.Decoder(_Sections)


def _described(data: bytes) -> tuple[str | None, int]:
    """A fragment's executionId (None if it has none) and its metrics, tags and customInfo
    (0 for what is not a fragment: records are checksummed, so only a foreign writer's)."""
    try:
        found = _SECTIONS.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None, 0
    execution = found.executionId
    items = sum(len(part or ()) for part in (found.metrics, found.tags, found.customInfo))
    return (execution if isinstance(execution, str) else None), items


def _chunks(leftover: Leftover, outcome: Outcome) -> Iterator[tuple[int, Path, list[Record]]]:
    """Uncommitted records by chunk; torn and corrupt ends noted in ``outcome``."""
    mark = leftover.commit()
    for number, path in leftover.segments:
        if number < mark.segment:
            continue
        start = mark.offset if number == mark.segment else 0
        try:
            file = path.open("rb")
        except FileNotFoundError:  # replayed meanwhile (only an unclaimed spool: a dry run)
            continue
        with file:
            scan = Scan()
            records = _read_records(file, start, scan)
            while chunk := [r for _, r in zip(range(CHUNK), records, strict=False)]:
                yield number, path, chunk
            if scan.status == "torn":
                outcome.torn.append(f"{path}: {scan.skipped_bytes} bytes")
            elif scan.status == "corrupt":
                outcome.corrupt.append(f"{path} at byte {scan.at}")
                return
        yield number, path, []  # this segment is read to its end


def summarize(leftover: Leftover) -> Outcome:
    """What a replay would send, without sending (``--dry-run``)."""
    outcome = Outcome()
    for _, _, chunk in _chunks(leftover, outcome):
        for record in chunk:
            execution, items = _described(record.data)
            outcome.records += 1
            outcome.items += items
            outcome.count(execution or leftover.execution_id, 1, items)
    return outcome


def replay(
    redis: Any, leftover: Leftover, progress: Callable[[int], None] | None = None
) -> Outcome:
    """XADD a claimed leftover's records in order (``redis``: a synchronous client); delete
    its files when all were sent. ``progress`` is told the number of each chunk's records."""
    outcome = Outcome()
    mark_path = commit_path(leftover.directory, leftover.name)
    replayed = leftover.commit().segment
    for number, path in leftover.segments:
        if number < replayed:  # sent, and marked so, by a replay that died before deleting it
            path.unlink(missing_ok=True)
    for number, path, chunk in _chunks(leftover, outcome):
        if not chunk:
            if not outcome.corrupt:
                mark_path.write_bytes(encode_commit(Commit(number + 1, 0)))
                path.unlink(missing_ok=True)
            continue
        pipe = redis.pipeline(transaction=False)
        for record in chunk:
            pipe.xadd(record.key, {"resource": record.data})
        ids = pipe.execute()
        with mark_path.open("wb") as mark:
            mark.write(encode_commit(Commit(number, chunk[-1].end)))
            mark.flush()
            os.fsync(mark.fileno())
        outcome.records += len(chunk)
        outcome.items += sum(_described(record.data)[1] for record in chunk)
        outcome.ids += [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        if progress is not None:
            progress(len(chunk))
    if not outcome.corrupt:
        mark_path.unlink(missing_ok=True)
        lock_path(leftover.directory, leftover.name).unlink(missing_ok=True)
    return outcome
