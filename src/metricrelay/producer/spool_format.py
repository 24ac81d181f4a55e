"""The spool's bytes on disk: framed, checksummed records and the commit mark (issue 18).

A record is ``length (4 bytes) | CRC32 of the payload (4) | payload``; the payload is the
stream key (2-byte length, then the key) followed by the packed fragment, exactly as it would
be XADDed. Reading stops at the first record that is not whole: at the end of a file that is a
*torn* tail (a process killed mid-write; skipped, reported), anywhere a complete frame whose
checksum fails is *corrupt* (reported, never read as data). Nothing after either is trusted,
since a damaged length leaves no reliable way to find the next frame.

The commit mark says how far a spool's records reached Redis: segment number and offset, with
a checksum of its own so that a damaged mark is noticed (read as "nothing committed": replay
then repeats records, the one duplication the design allows, and never skips one).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, Literal

__all__ = [
    "HEADER",
    "MAX_RECORD",
    "Commit",
    "Record",
    "Scan",
    "decode_commit",
    "encode_commit",
    "encode_record",
    "read_records",
]

_HEADER: Final = struct.Struct(">II")
HEADER: Final = _HEADER.size
_KEY: Final = struct.Struct(">H")
# No fragment comes near this (an entry holds at most one PATCH's limits, a few MB); a larger
# length can only be damage.
MAX_RECORD: Final = 256 * 1024 * 1024
_COMMIT: Final = struct.Struct(">QQI")


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled fragment: where it ends in its file, the stream it goes to, its bytes."""

    end: int
    key: str
    data: bytes


@dataclass(slots=True)
class Scan:
    """How a read of one file ended: ``clean`` (at its end), ``torn`` (an incomplete last
    record) or ``corrupt`` (a record failed its checksum); ``at`` is where reading stopped."""

    status: Literal["clean", "torn", "corrupt"] = "clean"
    at: int = 0
    size: int = 0

    @property
    def skipped_bytes(self) -> int:
        return self.size - self.at


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything before ``offset`` in segment ``segment``, and every earlier segment, is in
    Redis."""

    segment: int = 0
    offset: int = 0


def encode_record(key: str, data: bytes) -> bytes:
    raw_key = key.encode()
    payload = _KEY.pack(len(raw_key)) + raw_key + data
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _split(payload: bytes) -> tuple[str, bytes] | None:
    if len(payload) < _KEY.size:
        return None
    (length,) = _KEY.unpack_from(payload)
    if _KEY.size + length > len(payload):
        return None
    try:
        key = payload[_KEY.size : _KEY.size + length].decode()
    except UnicodeDecodeError:
        return None
    return key, payload[_KEY.size + length :]


def read_records(
    file: BinaryIO, start: int, scan: Scan, limit: int | None = None, end: int | None = None
) -> Iterator[Record]:
    """The whole records of ``file`` from offset ``start`` (at most ``limit``; none from ``end``
    on, where the writer knows its last whole record ends); ``scan`` tells, once the iterator
    is exhausted, how it ended and where."""
    file.seek(0, 2)
    scan.size = file.tell() if end is None else min(file.tell(), end)
    file.seek(start)
    position, count = start, 0
    while limit is None or count < limit:
        scan.at = position
        if position >= scan.size:
            scan.status = "clean"
            return
        header = file.read(HEADER)
        if len(header) < HEADER:
            scan.status = "torn"
            return
        length, crc = _HEADER.unpack(header)
        if length > MAX_RECORD:
            # an absurd length at the very end is a torn header as much as a damaged one
            scan.status = "torn" if position + HEADER >= scan.size else "corrupt"
            return
        payload = file.read(length)
        if len(payload) < length:
            scan.status = "torn"
            return
        parts = _split(payload) if zlib.crc32(payload) == crc else None
        if parts is None:
            scan.status = "corrupt"
            return
        position += HEADER + length
        count += 1
        yield Record(position, parts[0], parts[1])
    scan.at = position
    scan.status = "clean"


def encode_commit(commit: Commit) -> bytes:
    body = struct.pack(">QQ", commit.segment, commit.offset)
    return body + struct.pack(">I", zlib.crc32(body))


def decode_commit(raw: bytes) -> Commit | None:
    """The mark, or None when it is missing or damaged (then replay starts from the beginning)."""
    if len(raw) != _COMMIT.size:
        return None
    segment, offset, crc = _COMMIT.unpack(raw)
    if zlib.crc32(raw[:16]) != crc:
        return None
    return Commit(segment, offset)
