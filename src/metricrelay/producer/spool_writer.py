"""The Emitter's way around a Redis outage (issue 18): XADD directly while Redis keeps up, append
to the disk spool while it is away or slower than the training, replay the spool in order when
it is back — and only then write directly again, so that order within the execution holds
across the switch. Spools that dead processes of the same execution left are replayed first.

Runs in the Emitter's writer thread only; ``spooled`` and ``drained`` may be read anywhere.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from redis import Redis

from metricrelay.producer.spool import FsyncPolicy, Spool
from metricrelay.producer.spool_replay import claim, find_leftovers, replay
from metricrelay.producer.xadd_line import XaddLine
from metricrelay.retry import RetryPolicy

__all__ = ["Diverter", "Records"]

log = logging.getLogger(__name__)

Records = Sequence[tuple[str, bytes]]  # (stream key, packed fragment), in order
# Soon after a blip, then at most every 2 s: how often a Redis that failed is tried again.
_BACKOFF: Final = RetryPolicy(base=0.05, cap=2.0, budget=math.inf, retry_after_cap=0.0)
_DRAIN_CHUNK: Final = 500  # records per pipelined XADD when replaying
_DRAIN_ROUNDS: Final = 8  # chunks per drain() call: the queue is moved to disk between them


class Diverter:
    """Decides where each batch goes and replays what was spooled; a spool of ``max_bytes``
    0 (or one that cannot be created) leaves the old behaviour: retry until Redis takes it."""

    def __init__(
        self,
        redis: Any,
        *,
        directory: Path,
        execution_id: str,
        max_bytes: int,
        fsync: FsyncPolicy,
        on_ids: Callable[[list[str]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._line = XaddLine(redis.connection_pool) if isinstance(redis, Redis) else None
        self._directory = directory
        self._execution_id = execution_id
        self._max_bytes = max_bytes
        self._fsync: FsyncPolicy = fsync
        self._on_ids = on_ids
        self._clock = clock
        self._rng = random.Random()
        self._spool: Spool | None = None
        self._enabled = max_bytes > 0
        self._failures = 0
        self._retry_at = 0.0  # no Redis attempt before this (monotonic seconds)
        self._leftovers = self._enabled  # dead processes' spools still to look for
        self.refused = 0  # batches the spool could not take (full), retried later
        self.drained = threading.Event()
        self.drained.set()

    @property
    def spooled(self) -> int:
        """Records on disk not yet in Redis."""
        spool = self._spool
        return spool.pending if spool is not None else 0

    @property
    def behind(self) -> bool:
        """Something for :meth:`drain`: leftovers still to look for, or records on disk."""
        return self._leftovers or bool(self.spooled)

    @property
    def location(self) -> Path:
        return self._directory

    @property
    def redis_up(self) -> bool:
        """The last Redis write succeeded (or none was tried)."""
        return not self._failures

    # -- a batch ------------------------------------------------------------------------------

    def deliver(
        self, records: Records, *, pressure: bool, stop: Callable[[], bool]
    ) -> tuple[Literal["written", "spooled", "stopped"], list[Any]]:
        """Put ``records`` in Redis (their ids, as Redis gave them) or in the spool; retried
        while neither can take them, until ``stop()``. ``pressure``: the memory buffer is
        filling, do not wait on Redis."""
        if not records:
            return "written", []
        spool_first = pressure and self._enabled
        while True:
            if not spool_first and (ids := self._direct(records)) is not None:
                return "written", ids
            if self._append(records):
                return "spooled", []
            if spool_first and (ids := self._direct(records)) is not None:
                return "written", ids  # the spool is full: Redis is the only way on
            if stop():
                return "stopped", []
            self.drain()  # makes room, if Redis is back
            time.sleep(min(max(self._retry_at - self._clock(), 0.01), 0.5))

    def _direct(self, records: Records) -> list[Any] | None:
        """Their ids if Redis took them now; None while older records wait (in the spool, or
        in dead processes' leftovers not yet replayed), while a failed Redis is not to be
        tried yet, or when this try failed."""
        if self._leftovers:
            self.drain()  # the dead processes' records go first
        if self.behind or self._clock() < self._retry_at:
            return None
        try:
            ids = self._xadd(records)
        except Exception as error:  # every failure is retried or spooled
            self._failed(error)
            return None
        self._recovered()
        return ids

    def _append(self, records: Records) -> bool:
        if not self._enabled:
            return False
        try:
            if self._spool is None:
                self._spool = Spool(
                    self._directory, self._execution_id, max_bytes=self._max_bytes,
                    fsync=self._fsync,
                )  # fmt: skip
            taken = self._spool.append(records)
        except OSError as error:
            if self._spool is None:  # no spool at all here: as without one
                log.error("cannot spool in %s (%s): retrying Redis instead", self._directory, error)
                self._enabled = False
                return False
            log.error("cannot append to the spool in %s: %s", self._directory, error)
            taken = False
        if taken:
            self.drained.clear()
        else:
            self.refused += 1
        return taken

    # -- catching up --------------------------------------------------------------------------

    def drain(self) -> None:
        """Replay leftovers of dead processes, then some of the spool, if Redis may be tried."""
        if self._clock() < self._retry_at or not self.behind:
            return
        try:
            if self._leftovers:
                self._replay_leftovers()
            spool = self._spool
            for _ in range(_DRAIN_ROUNDS):
                if spool is None or not spool.pending:
                    break
                batch = spool.peek(_DRAIN_CHUNK)
                if not batch:  # unreadable: a disk fault (reported by the spool's scan)
                    log.error(
                        "the spool in %s cannot be read back: %s", self._directory, spool.torn
                    )
                    break
                ids = self._xadd([(record.key, record.data) for _, record in batch])
                number, last = batch[-1]
                spool.commit(number, last.end, len(batch))
                self._on_ids([i.decode() if isinstance(i, bytes) else str(i) for i in ids])
        except Exception as error:  # Redis away again: later
            self._failed(error)
            return
        self._recovered()
        if not self.spooled:
            self.drained.set()

    def _replay_leftovers(self) -> None:
        for leftover in find_leftovers(self._directory, self._execution_id):
            with claim(leftover) as mine:
                if not mine:
                    continue  # a live process of the execution (another rank): its own
                outcome = replay(self._redis, leftover)
            self._on_ids(outcome.ids)
            log.info("replayed %d records a previous process spooled", outcome.records)
            for problem in outcome.torn:
                log.warning("skipped a torn last record: %s", problem)
            for problem in outcome.corrupt:
                log.error("a corrupt record stopped the replay (spool kept): %s", problem)
        self._leftovers = False

    # -- Redis --------------------------------------------------------------------------------

    def _xadd(self, records: Records) -> list[Any]:
        if self._line is not None:
            return self._line.xadd(records)
        pipe = self._redis.pipeline(transaction=False)
        for key, data in records:
            pipe.xadd(key, {"resource": data})
        return list(pipe.execute())

    def _failed(self, error: BaseException) -> None:
        if not self._failures:
            where = f"spooling to {self._directory}" if self._enabled else "retrying"
            log.warning("cannot write to Redis (%s): %s", error, where)
        self._retry_at = self._clock() + _BACKOFF.delay(self._failures, self._rng)
        self._failures += 1

    def _recovered(self) -> None:
        if self._failures:
            log.info("Redis is back: %d spooled records to replay", self.spooled)
        self._failures = 0
        self._retry_at = 0.0

    def close(self) -> tuple[int, Path | None]:
        """Records left on disk and where (the spool is deleted when it is empty)."""
        if self._line is not None:
            self._line.close()
        if self._spool is None:
            return 0, None
        left = self._spool.pending
        return left, self._spool.close()
