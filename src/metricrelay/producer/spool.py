"""One process's spool on local disk: where the Emitter's fragments wait while Redis is away.

Files of one spool share a name ``<execution>@<pid>-<8 hex>`` (random: a container's process
has the same pid at every start, and a process may open a second spool of an execution after
closing the first): segments ``.<n>.spool`` (append-only, created afresh,
records framed by :mod:`spool_format`), a commit mark ``.commit`` (how far they reached
Redis) and a ``.lock`` the process holds (``flock``) while it lives, so that a replay never
takes over the spool of a live process, and does take over one of a process that died — the
kernel drops the lock on any exit, SIGKILL included, so a reused pid fools nothing.

Only the Emitter's writer thread uses a :class:`Spool`; another thread may read ``pending``.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Literal

from metricrelay.producer.spool_format import Commit, Record, Scan, encode_commit, encode_record
from metricrelay.producer.spool_format import read_records as _read_records

__all__ = [
    "SEGMENT_BYTES",
    "FsyncPolicy",
    "Spool",
    "commit_path",
    "default_directory",
    "lock_path",
    "segment_path",
]

FsyncPolicy = Literal["always", "batch", "never"]
# Segments this size let the disk be given back while a long outage drains.
SEGMENT_BYTES: Final = 64 * 1024 * 1024


def default_directory(configured: str | None, env: Mapping[str, str] | None = None) -> Path:
    """``METRICRELAY_SPOOL_DIR``, else ``$XDG_CACHE_HOME/metricrelay/spool``, else
    ``~/.cache/metricrelay/spool``: per user, on local disk, as caches are."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "metricrelay" / "spool"


def segment_path(directory: Path, name: str, number: int) -> Path:
    return directory / f"{name}.{number:08d}.spool"


def commit_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.commit"


def lock_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.lock"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """Append fragments, read them back in order, commit what reached Redis; bounded on disk."""

    def __init__(
        self,
        directory: Path,
        execution_id: str,
        *,
        max_bytes: int,
        fsync: FsyncPolicy = "batch",
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.name = f"{execution_id}@{os.getpid()}-{secrets.token_hex(4)}"
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock = os.open(lock_path(directory, self.name), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._commit_fd: int | None = None
        self._write_fd: int | None = None
        self._write_number = 0
        self._sizes: dict[int, int] = {}  # segment number → bytes, for those on disk
        self._read_number = 0  # the confirmed cursor: segment and offset
        self._read_offset = 0
        self._reader: tuple[int, BinaryIO] | None = None
        self.pending = 0  # records spooled and not yet committed
        self.appended = 0
        self.torn: Scan | None = None

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[str, bytes]]) -> bool:
        """Spool ``(stream key, fragment)`` pairs, behind everything before; False, spooling
        nothing, when they would take the spool past ``max_bytes``."""
        frames = [encode_record(key, data) for key, data in records]
        size = sum(map(len, frames))
        if self.disk_bytes + size > self.max_bytes:
            return False
        fd = self._segment_for(size)
        try:
            if self.fsync == "always":
                for frame in frames:
                    _write_all(fd, frame)
                    os.fsync(fd)
            else:
                _write_all(fd, b"".join(frames))
                if self.fsync == "batch":
                    os.fsync(fd)
        except OSError:
            self._undo_append(fd)
            raise
        self._sizes[self._write_number] += size
        self.pending += len(frames)
        self.appended += len(frames)
        return True

    def _undo_append(self, fd: int) -> None:
        """A write or fsync failed (disk full, I/O error): nothing of this batch may stay, or
        its retry would come after a half record, or twice. Cut the segment back to its last
        whole record; if even that fails, leave it (reads stop at the size counted) for a new
        segment."""
        try:
            os.ftruncate(fd, self._sizes[self._write_number])
        except OSError:
            os.close(fd)
            self._write_fd = None
            self._write_number += 1

    def _segment_for(self, size: int) -> int:
        current = self._sizes.get(self._write_number)
        if self._write_fd is not None and current and current + size > self.segment_bytes:
            os.close(self._write_fd)
            self._write_fd = None
            self._write_number += 1
        if self._write_fd is None:
            path = segment_path(self.directory, self.name, self._write_number)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND  # never another's file
            self._write_fd = os.open(path, flags, 0o600)
            self._sizes[self._write_number] = 0
            if self.fsync != "never":  # the new name must survive a crash too
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return self._write_fd

    # -- reading back -------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[int, Record]]:
        """The next records after the confirmed cursor (segment number, record), in order."""
        found: list[tuple[int, Record]] = []
        number, offset = self._read_number, self._read_offset
        while len(found) < limit and number in self._sizes:
            if offset >= self._sizes[number]:
                if number >= self._write_number:
                    break
                number, offset = number + 1, 0
                continue
            reader = self._open_reader(number)
            scan = Scan()
            size = self._sizes[number]
            batch = list(_read_records(reader, offset, scan, limit - len(found), end=size))
            found += [(number, record) for record in batch]
            if scan.status != "clean":  # our own file: only a disk fault gets here
                self.torn = scan
                break
            offset = batch[-1].end if batch else size
        return found

    def _open_reader(self, number: int) -> BinaryIO:
        if self._reader is not None and self._reader[0] == number:
            return self._reader[1]
        if self._reader is not None:
            self._reader[1].close()
        handle = segment_path(self.directory, self.name, number).open("rb")
        self._reader = (number, handle)
        return handle

    def commit(self, number: int, end: int, count: int) -> None:
        """``count`` records up to ``end`` of segment ``number`` are in Redis: move the cursor,
        write the mark, delete segments wholly behind it."""
        self._read_number, self._read_offset = number, end
        self.pending -= count
        if self.pending == 0 and self._write_fd is not None:  # all caught up: start afresh
            os.close(self._write_fd)
            self._write_fd = None
            self._write_number += 1
            self._read_number, self._read_offset = self._write_number, 0
        for done in [n for n in self._sizes if n < self._read_number]:
            if self._reader is not None and self._reader[0] == done:
                self._reader[1].close()
                self._reader = None
            segment_path(self.directory, self.name, done).unlink(missing_ok=True)
            del self._sizes[done]
        self._write_commit(Commit(self._read_number, self._read_offset))

    def _write_commit(self, commit: Commit) -> None:
        if self._commit_fd is None:
            path = commit_path(self.directory, self.name)
            self._commit_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(self._commit_fd, encode_commit(commit), 0)
        if self.fsync != "never":
            os.fsync(self._commit_fd)

    # -- the end ------------------------------------------------------------------------------

    def close(self) -> Path | None:
        """Give the spool up: deleted when empty; else left on disk (its first segment's path
        is returned) for a later Emitter of the execution or ``metricrelay spool replay``."""
        for fd in (self._write_fd, self._commit_fd):
            if fd is not None:
                os.close(fd)
        self._write_fd = self._commit_fd = None
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None
        left = None
        if self.pending:
            left = segment_path(self.directory, self.name, min(self._sizes))
        else:
            for number in list(self._sizes):
                segment_path(self.directory, self.name, number).unlink(missing_ok=True)
            self._sizes.clear()
            commit_path(self.directory, self.name).unlink(missing_ok=True)
            lock_path(self.directory, self.name).unlink(missing_ok=True)
        os.close(self._lock)  # the lock goes with it: a replay may take the spool over now
        return left
