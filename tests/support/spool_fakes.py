"""What the spool tests drive the Diverter with: a Redis that can be taken away, a clock that
moves only when told, and records that carry their step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from metricrelay.producer.spool import FsyncPolicy
from metricrelay.producer.spool_writer import Diverter

__all__ = ["KEY", "Clock", "FlakyRedis", "diverter", "never", "record", "steps"]

KEY = "metricrelay:events"


class FlakyRedis:
    """What the Diverter and replay use of a synchronous client (pipelined XADDs); ``up``."""

    def __init__(self) -> None:
        self.up = True
        self.entries: list[bytes] = []
        self._queued: list[bytes] = []

    def pipeline(self, transaction: bool = False) -> FlakyRedis:
        return self

    def xadd(self, key: str, fields: dict[str, bytes]) -> None:
        self._queued.append(fields["resource"])

    def execute(self) -> list[bytes]:
        queued, self._queued = self._queued, []
        if not self.up:
            raise ConnectionError("Connection refused")
        self.entries += queued
        return [f"{len(self.entries)}-0".encode() for _ in queued]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def record(step: int) -> tuple[str, bytes]:
    body = {"executionId": "exec-1", "metrics": [{"name": "loss", "value": 1.0, "step": step}]}
    return KEY, orjson.dumps(body)


def steps(redis: FlakyRedis) -> list[int]:
    return [orjson.loads(data)["metrics"][0]["step"] for data in redis.entries]


def never() -> bool:
    return False


def diverter(
    directory: Path,
    redis: Any,
    clock: Clock,
    *,
    max_bytes: int = 10**9,
    fsync: FsyncPolicy = "never",
) -> Diverter:
    """A Diverter of execution ``exec-1`` spooling to ``directory``."""
    return Diverter(
        redis,
        directory=directory,
        execution_id="exec-1",
        max_bytes=max_bytes,
        fsync=fsync,
        on_ids=lambda ids: None,
        clock=clock,
    )
