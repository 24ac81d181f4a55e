"""The familiar call styles map onto the MetricResource model as the README says."""

from __future__ import annotations

import json

import orjson
import pytest
import redis

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.producer import compat

pytestmark = pytest.mark.integration  # a real redis-server


def fragments(url: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    return [orjson.loads(f[b"resource"]) for _, f in client.xrange(Keys().events)]


def test_data_intelligence_style_tracking(private_redis: RedisServer) -> None:
    tracking = compat.Tracking()
    with pytest.raises(RuntimeError, match="start_run"):
        tracking.log_metric("loss", 1.0)
    execution = tracking.start_run(
        "run-di-0001", "collection-a", redis_url=private_redis.url, handle_sigterm=False
    )
    assert execution == "run-di-0001"
    tracking.log_parameters({"lr": 0.1})
    tracking.log_parameters({"epochs": 3})
    tracking.log_metrics({"loss": 0.5, "acc": 0.8}, step=1)
    tracking.log_metrics([{"name": "loss", "value": 0.4, "step": 2}])
    tracking.log_metric("loss", 0.3, 3)
    tracking.set_tags({"team": "vision"})
    tracking.set_labels({"purpose": "demo"})
    tracking.end_run(timeout=10)
    written = fragments(private_redis.url)
    metrics = [(m["name"], m.get("step")) for f in written for m in f.get("metrics", [])]
    assert metrics == [("loss", 1), ("acc", 1), ("loss", 2), ("loss", 3)]
    tags = {t["name"]: t["value"] for f in written for t in f.get("tags", [])}
    assert tags == {
        "run_name": "run-di-0001", "run_collection_name": "collection-a",
        "team": "vision", "purpose": "demo",
    }  # fmt: skip
    infos = [c for f in written for c in f.get("customInfo", [])]
    assert json.loads(infos[-1]["value"]) == {"lr": 0.1, "epochs": 3}  # the last write wins


def test_craft_ai_style_functions(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICRELAY_EXECUTION_ID", "run-craft-01")
    monkeypatch.setenv("METRICRELAY_REDIS_URL", private_redis.url)
    monkeypatch.setattr(compat, "_default", None)
    compat.record_metric_value("accuracy", 0.93)
    compat.record_list_metric_values("loss", [0.9, 0.5, 0.2])
    emitter = compat._emitter()
    emitter.flush(timeout=10)
    emitter.close()
    metrics = [
        (m["name"], m.get("step")) for f in fragments(private_redis.url) for m in f["metrics"]
    ]
    assert metrics == [("accuracy", None), ("loss", 0), ("loss", 1), ("loss", 2)]
