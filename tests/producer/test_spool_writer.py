"""The Emitter's choice of Redis or spool (issue 18): order across the switch, the disk bound,
leftovers of dead processes first. Redis is a fake that can be taken away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from metricrelay.producer.spool import Spool
from metricrelay.producer.spool_writer import Diverter

KEY = "metricrelay:events"


class FlakyRedis:
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


def record(step: int) -> tuple[str, bytes]:
    return KEY, orjson.dumps({"executionId": "exec-1", "metrics": [{"step": step}]})


def steps(redis: FlakyRedis) -> list[int]:
    return [orjson.loads(data)["metrics"][0]["step"] for data in redis.entries]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def diverter(tmp_path: Path, redis: Any, clock: Clock, max_bytes: int = 10**9) -> Diverter:
    ids: list[str] = []
    return Diverter(
        redis,
        directory=tmp_path,
        execution_id="exec-1",
        max_bytes=max_bytes,
        fsync="never",
        on_ids=ids.extend,
        clock=clock,
    )


def never() -> bool:
    return False


def test_an_outage_spools_and_order_holds_across_the_switch_back(tmp_path: Path) -> None:
    redis, clock = FlakyRedis(), Clock()
    way = diverter(tmp_path, redis, clock)
    assert way.deliver([record(0)], pressure=False, stop=never)[0] == "written"
    redis.up = False
    assert way.deliver([record(1)], pressure=False, stop=never)[0] == "spooled"
    redis.up = True
    # Redis is back, but the spool holds older records: newer ones go behind them
    assert way.deliver([record(2)], pressure=False, stop=never)[0] == "spooled"
    assert not way.drained.is_set() and way.spooled == 2
    clock.now = 10.0  # past the backoff
    way.drain()
    assert steps(redis) == [0, 1, 2] and way.drained.is_set()
    assert way.deliver([record(3)], pressure=False, stop=never)[0] == "written"
    assert steps(redis) == [0, 1, 2, 3]
    assert way.close() == (0, None)
    assert list(tmp_path.iterdir()) == []


def test_pressure_spools_although_redis_is_up(tmp_path: Path) -> None:
    redis, clock = FlakyRedis(), Clock()
    way = diverter(tmp_path, redis, clock)
    assert way.deliver([record(0)], pressure=True, stop=never)[0] == "spooled"
    way.drain()
    assert steps(redis) == [0]


def test_a_full_spool_waits_for_redis_and_close_keeps_what_is_left(tmp_path: Path) -> None:
    redis, clock = FlakyRedis(), Clock()
    redis.up = False
    way = diverter(tmp_path, redis, clock, max_bytes=200)
    assert way.deliver([record(0), record(1)], pressure=False, stop=never)[0] == "spooled"
    result = way.deliver([record(2)] * 3, pressure=False, stop=lambda: True)
    assert result == ("stopped", []) and way.refused == 1
    left, path = way.close()
    assert left == 2 and path is not None and path.exists()


def test_leftovers_of_dead_processes_go_first(tmp_path: Path) -> None:
    old = Spool(tmp_path / "spool", "exec-1", max_bytes=10**9)
    old.append([record(0), record(1)])
    old.close()  # as a process that died with Redis away leaves it
    redis, clock = FlakyRedis(), Clock()
    way = Diverter(
        redis,
        directory=tmp_path / "spool",
        execution_id="exec-1",
        max_bytes=10**9,
        fsync="never",
        on_ids=lambda ids: None,
        clock=clock,
    )
    way.drain()
    assert way.deliver([record(2)], pressure=False, stop=never)[0] == "written"
    assert steps(redis) == [0, 1, 2]
    assert list((tmp_path / "spool").iterdir()) == []
