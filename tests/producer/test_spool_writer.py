"""The Emitter's choice of Redis or spool (issue 18): order across the switch, the disk bound,
leftovers of dead processes first. Redis is a fake that can be taken away."""

from __future__ import annotations

from pathlib import Path

from tests.support.spool_fakes import Clock, FlakyRedis, diverter, never, record, steps

from metricrelay.producer.spool import Spool
from metricrelay.producer.spool_writer import Diverter


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
    way = diverter(tmp_path, redis, clock, max_bytes=250)  # two records of 101 bytes
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
