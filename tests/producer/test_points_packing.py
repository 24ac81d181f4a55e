"""Call-site checks and producer-side packing, without Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from metricrelay.codec import decode_entry
from metricrelay.producer import packing, points
from metricrelay.producer.packing import Named, Packer, encode_points, pack
from metricrelay.producer.points import (
    CACHE_LIMIT,
    PointError,
    check_labels,
    check_metric_name,
    check_metric_names,
    check_step,
    check_value,
    check_values,
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


def test_remembered_names_and_labels_are_still_refused_when_invalid() -> None:
    assert check_metric_names(("loss", "acc")) == ("loss", "acc")
    for bad in (("loss", 5), ("loss", "!!!"), ("loss", "")):
        with pytest.raises(PointError, match="metric name"):
            check_metric_names(bad)
    assert check_labels({"rank": "0"}) == (("rank", "0"),)
    for bad_labels in ({"rank": 0}, {"rank": ""}, {"": "0"}, [("rank", "0", "x")]):
        with pytest.raises(PointError):
            check_labels(bad_labels)  # type: ignore[arg-type]
    assert check_labels([["rank", "0"]]) == (("rank", "0"),)  # type: ignore[list-item]
    assert check_values((0.5, 1, 2.5)) == (0.5, 1.0, 2.5)
    assert check_values((1e308, 1e308)) == (1e308, 1e308)  # the sum overflows; each is finite
    for bad_value, message in ((float("nan"), "finite"), (True, "number"), ("1", "number")):
        with pytest.raises(PointError, match=message):
            check_values((0.5, bad_value))


def test_the_caches_stay_bounded() -> None:
    for i in range(CACHE_LIMIT + 10):
        check_metric_name(f"m{i}")
        check_metric_names((f"m{i}", "loss"))
        check_labels({"rank": str(i)})
        encode_points(((f"m{i}",), (0.5,), i, (("rank", str(i)),), 10**18))
    caches = (points._good_names, points._good_name_sets, points._good_labels)
    caches += (packing._OPENINGS, packing._LABEL_TEXTS, packing._ROWS)  # type: ignore[assignment]
    for cache in caches:
        assert 0 < len(cache) <= CACHE_LIMIT


def test_a_call_encodes_as_the_stream_always_carried_its_points() -> None:
    now = 1_795_435_200 * 10**9 + 123_456_000
    labels = (("rank", "3"), ("node", 'node "7"'))
    op = (("train/loss", "gpu/mem_gb"), (0.25, 1e-05), 12, labels, now)
    metrics = orjson.loads(b"[" + encode_points(op) + b"]")
    assert metrics == [
        {
            "name": name,
            "value": value,
            "timestamp": "2026-11-23T12:00:00.123456Z",
            "step": 12,
            "labels": [{"name": "rank", "value": "3"}, {"name": "node", "value": 'node "7"'}],
        }
        for name, value in (("train/loss", 0.25), ("gpu/mem_gb", 1e-05))
    ]
    given = (("loss",), (2.0,), None, None, "2026-11-23T12:00:00.5Z")
    assert orjson.loads(encode_points(given)) == {
        "name": "loss",
        "value": 2.0,
        "timestamp": "2026-11-23T12:00:00.5Z",
    }
    wide = (tuple(f"m{i}" for i in range(2500)), (0.5,) * 2500, 1, None, now)
    packed = pack([wide], "default", "run-pack-3")
    assert [count for _, count in packed] == [1000, 1000, 500]
    assert [len(orjson.loads(data)["metrics"]) for data, _ in packed] == [1000, 1000, 500]


def _core(on_error: str = "raise") -> Any:
    from metricrelay.producer.emitter import EmitterConfig, _Core  # noqa: PLC0415

    return _Core(EmitterConfig("run-core-1", on_error=on_error, env={}))  # type: ignore[arg-type]


def test_log_metrics_checks_every_rule_and_falls_back_point_by_point() -> None:
    core = _core()
    core.log_metrics({"a": 1.0, "b": 2.0}, step=1, labels={"rank": "0"})
    with pytest.raises(PointError, match="must be finite"):
        core.log_metrics({"c": 3.0, "d": float("inf")}, step=2)
    with pytest.raises(PointError, match="at most 20 labels"):
        core.log_metrics({"e": 1.0}, labels={f"l{i}": "v" for i in range(21)})
    with pytest.raises(PointError, match="step"):
        core.log_metrics({"f": 1.0}, step=-1)
    # as before: the points of a call ahead of its bad one were queued when it raised
    assert [(op[0], op[2]) for op in core._queue] == [(("a", "b"), 1), (("c",), 2)]
    lenient = _core("warn")
    lenient.log_metrics({"a": 1.0, "b": float("nan"), "c": 3}, step=1)
    assert [(op[0], op[1]) for op in lenient._queue] == [(("a",), (1.0,)), (("c",), (3.0,))]


def test_each_call_gets_a_distinct_increasing_microsecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from metricrelay.producer import emitter  # noqa: PLC0415

    frozen = 1_795_435_200 * 10**9 + 123_456_789  # calls faster than the clock's microsecond
    monkeypatch.setattr(emitter, "time", SimpleNamespace(time_ns=lambda: frozen))
    core = _core()
    for _ in range(2000):
        core.log_metrics({"loss": 0.5, "lr": 0.1}, step=0)  # same step: only time tells apart
        core.log_metric("loss", 0.5)
    moments = [op[4] for op in core._queue]
    assert moments == [frozen // 1000 * 1000 + i * 1000 for i in range(4000)]
    stamps = {
        m["timestamp"]
        for data, _ in pack(core._queue, "default", "x")
        for m in orjson.loads(data)["metrics"]
    }
    assert len(stamps) == 4000
