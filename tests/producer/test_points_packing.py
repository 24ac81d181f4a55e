"""Call-site checks and producer-side packing, without Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from metricrelay.codec import decode_entry
from metricrelay.producer.packing import Named, Packer, pack
from metricrelay.producer.points import (
    PointError,
    check_labels,
    check_metric_name,
    check_step,
    check_value,
    format_ns,
    stamp,
)


def test_values_steps_names_and_labels() -> None:
    assert check_value(3) == 3.0 and check_value(0.5) == 0.5 and check_value(Decimal("1.5")) == 1.5
    for bad in (float("nan"), float("inf"), True, "1", None):
        with pytest.raises(PointError):
            check_value(bad)
    assert check_step(None) is None and check_step(7) == 7
    for bad in (-1, 1.0, True, "2", 2**63):
        with pytest.raises(PointError):
            check_step(bad)
    assert check_metric_name("Error Rate") == "Error Rate"
    for bad in ("", "!!!", "x" * 257, 5):
        with pytest.raises(PointError):
            check_metric_name(bad)
    assert check_labels({"rank": "0"}) == (("rank", "0"),)
    assert check_labels([("rank", "1")]) == (("rank", "1"),)
    with pytest.raises(PointError):
        check_labels({"": "x"})


def test_times_are_canonical_utc() -> None:
    moment = datetime(2026, 11, 23, 12, 0, 5, 123456, tzinfo=UTC)
    ns = int(moment.timestamp()) * 10**9 + 123456789
    assert format_ns(ns) == "2026-11-23T12:00:05.123456Z"
    assert format_ns(ns + 10**9) == "2026-11-23T12:00:06.123456Z"  # the per-second cache moves
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert stamp(plus_two) == "2026-11-23T12:00:05.123456Z"
    with pytest.raises(PointError, match="timezone-aware"):
        stamp(datetime(2026, 1, 1))


def test_pack_respects_every_limit_and_the_worker_accepts_each_fragment() -> None:
    now = 1_795_435_200 * 10**9
    ops: list[object] = [("loss", float(i), i, None, now + i) for i in range(2500)]
    ops += [Named("tags", f"t{i % 150}", "v") for i in range(300)]
    ops += [Named("customInfo", f"c{i}", "x" * 1_000_000) for i in range(12)]
    packed = pack(ops, "default", "run-pack-1")  # type: ignore[arg-type]
    assert sum(count for _, count in packed) == len(ops)
    total_metrics = 0
    for data, _ in packed:
        decoded = decode_entry(data, entry_ms=0, default_resource_group="x")
        assert decoded.problems == [] and decoded.fragment is not None
        fragment = orjson.loads(data)
        assert len(fragment.get("metrics", [])) <= 1000
        assert len(fragment.get("tags", [])) <= 100
        infos = fragment.get("customInfo", [])
        assert sum(len(orjson.dumps(i)) for i in infos) <= 5_000_000
        total_metrics += len(fragment.get("metrics", []))
    assert total_metrics == 2500


def test_the_packer_takes_checked_metrics_as_emit_gives_them() -> None:
    packer = Packer("default", "run-pack-2")
    for step in range(2500):
        packer.add_metric({"name": "loss", "value": 0.5, "step": step})
    closed = packer.take()
    assert [count for _, count in closed] == [1000, 1000] and packer.pending == 500
    packer.close()
    last, count = packer.take()[0]
    assert count == 500 and packer.pending == 0 and packer.take() == []
    assert orjson.loads(last) == {
        "resourceGroup": "default",
        "executionId": "run-pack-2",
        "metrics": [{"name": "loss", "value": 0.5, "step": s} for s in range(2000, 2500)],
    }


def test_emitter_settings_come_from_arguments_else_the_environment() -> None:
    from metricrelay.producer.emitter import EmitterConfig  # noqa: PLC0415

    env = {"AICORE_EXECUTION_ID": "aicore-exec", "AICORE_RESOURCE_GROUP": "rg-a"}
    config = EmitterConfig(env=env)
    assert (config.execution_id, config.resource_group) == ("aicore-exec", "rg-a")
    assert config.redis_url == "redis://localhost:6379/0"
    env |= {"METRICRELAY_EXECUTION_ID": "mr-exec", "METRICRELAY_REDIS_URL": "redis://h:1/2"}
    config = EmitterConfig(env=env)
    assert (config.execution_id, config.redis_url) == ("mr-exec", "redis://h:1/2")
    assert EmitterConfig("given", env=env).execution_id == "given"
    with pytest.raises(ValueError, match="no execution id"):
        EmitterConfig(env={})
    with pytest.raises(ValueError, match="policy"):
        EmitterConfig("x", policy="maybe", env={})  # type: ignore[arg-type]
