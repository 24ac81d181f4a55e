"""One replay (or purge) at a time: a lock key held, and renewed, while dead letters change.

Two replays of the same letters would both append them (duplicates at the API) before one of
them deletes the originals; a purge during a replay could delete letters whose fragments the
replay has just appended (they would be delivered although purged). The lock (SET NX PX on
``Keys.replay_lock``) is renewed in the background; a replay that loses it (the process was
paused for longer than the TTL, or the key was deleted by hand) stops before its next change,
as another replay may have started by then. A replay that crashes leaves the lock to expire
within its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

from redis.exceptions import RedisError

from metricrelay.errors import MetricRelayError
from metricrelay.relay.leases import release_key, renew_key
from metricrelay.replies import as_text
from metricrelay.timestamps import format_utc

__all__ = ["DEFAULT_TTL_S", "ReplayBusy", "ReplayLock", "ReplayLockLost", "default_holder"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S: Final = 30.0


class ReplayBusy(MetricRelayError):
    """Another replay (or purge) holds the lock."""

    def __init__(self, holder: str, expires_in: float | None) -> None:
        left = f"; its lock expires in {expires_in:.0f}s unless renewed" if expires_in else ""
        super().__init__(
            f"the dead letters are being changed by {holder}{left}: "
            "run one replay or purge at a time"
        )
        self.holder = holder


class ReplayLockLost(MetricRelayError):
    """This replay's lock expired or was taken: it stopped before changing anything more."""


def default_holder(command: str = "replay") -> str:
    """Who holds the lock, for the message another command prints: what, host, pid, start."""
    host, pid, now = socket.gethostname(), os.getpid(), format_utc(datetime.now(UTC))
    return f"{command} on {host} pid {pid} since {now}"


class ReplayLock:
    """``async with ReplayLock(redis, key):`` holds the lock; :meth:`check` raises once lost."""

    def __init__(
        self,
        redis: Any,
        key: str,
        *,
        holder: str | None = None,
        ttl: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder or default_holder()
        self.ttl_ms = max(1, int(ttl * 1000))
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = -float("inf")
        self.lost = False

    async def __aenter__(self) -> ReplayLock:
        started = self._clock()
        if not await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms):
            holder = await self.redis.get(self.key)
            left_ms = int(await self.redis.pttl(self.key))
            text = as_text(holder) if holder else "just ended"
            raise ReplayBusy(text, left_ms / 1000 if left_ms > 0 else None)
        self._renewed_at = started
        self._task = asyncio.create_task(self._keep(), name="replay-lock")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.lost:
            try:
                await release_key(self.redis, self.key, self.holder)
            except RedisError as exc:  # the replay's work is done; the lock expires by itself
                log.warning("could not release the replay lock (it expires by itself): %s", exc)

    def check(self) -> None:
        """Raise :class:`ReplayLockLost` when the lock may be another replay's by now."""
        if self.lost or self._clock() - self._renewed_at >= self.ttl_ms / 1000:
            self.lost = True
            raise ReplayLockLost(
                "the replay lost its lock (paused longer than its time to live, or the key "
                f"{self.key} was deleted) and stopped; run it again"
            )

    async def _keep(self) -> None:
        interval = self.ttl_ms / 1000 / 3
        while not self.lost:
            await asyncio.sleep(interval)
            started = self._clock()
            try:
                held = await renew_key(self.redis, self.key, self.holder, self.ttl_ms)
            except RedisError as exc:  # try again; check() stops the replay once it is too late
                log.warning("could not renew the replay lock: %s", exc)
                continue
            if not held:
                self.lost = True
                log.error("the replay lock %s is no longer this replay's", self.key)
                return
            self._renewed_at = started
