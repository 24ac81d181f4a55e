"""``metricrelay emit`` and ``metricrelay ingest`` (with SAP's SDK in in-cluster mode)."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from tests.support.reference_api import read_back

from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration  # a real redis-server

KEYS = Keys()
FOUR = Keys(shards=4)
RUNS = [f"run-shard-{i:02d}" for i in range(10)]


def entries(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    return [orjson.loads(fields[b"resource"]) for _, fields in client.xrange(KEYS.events)]


def test_emit_packs_points_writes_fragments_and_reports_bad_lines(
    private_redis: RedisServer,
) -> None:
    lines = [
        orjson.dumps({"executionId": "run-emit-1", "name": "loss", "value": s / 10, "step": s})
        for s in range(2500)
    ]
    lines.insert(3, b"this is not json")
    lines.insert(10, orjson.dumps({"executionId": "run-emit-1", "name": "loss", "value": "high"}))
    lines.append(
        orjson.dumps({"executionId": "run-emit-2", "tags": [{"name": "stage", "value": "x"}]})
    )
    lines.append(b"")
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "emit", "--redis-url", private_redis.url],
        input=b"\n".join(lines),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "line 4: not JSON" in err
    assert re.search(r"line 11: metrics\[0\]\.value: input should be a valid number", err)
    assert "2500 points in 4 entries" in err and "2 bad line(s) skipped" in err
    written = entries(private_redis.url)
    packed = [e for e in written if e["executionId"] == "run-emit-1"]
    assert [len(e["metrics"]) for e in packed] == [1000, 1000, 500]
    assert [m["step"] for e in packed for m in e["metrics"]] == list(range(2500))
    assert [e["tags"] for e in written if e["executionId"] == "run-emit-2"] == [
        [{"name": "stage", "value": "x"}]
    ]


def _sharded_entries(url: str) -> dict[str, list[dict[str, Any]]]:
    """Shard name → the fragments in that shard's event stream (layout of 4)."""
    client = redis.Redis.from_url(url)
    return {
        shard.name: [orjson.loads(f[b"resource"]) for _, f in client.xrange(shard.events)]
        for shard in FOUR.all_shards()
    }


def _assert_routed(url: str, expected_per_run: int) -> None:
    """Every run's fragments are in its shard of 4 and in no other; the runs use >1 shard."""
    found = _sharded_entries(url)
    for run in RUNS:
        home = FOUR.route("default", run).name
        for name, fragments in found.items():
            mine = [f for f in fragments if f["executionId"] == run]
            assert len(mine) == (expected_per_run if name == home else 0), (run, name)
    assert sum(bool(fragments) for fragments in found.values()) > 1
    assert not redis.Redis.from_url(url).exists(KEYS.events)  # no unsharded stream at all


def test_emit_routes_each_execution_to_its_shard(private_redis: RedisServer) -> None:
    lines = [
        orjson.dumps({"executionId": run, "name": "loss", "value": 0.5, "step": step})
        for step in range(3)
        for run in RUNS
    ]
    lines += [
        orjson.dumps({"executionId": run, "tags": [{"name": "k", "value": "v"}]}) for run in RUNS
    ]
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "emit", "--redis-url", private_redis.url,
         "--shards", "4"],
        input=b"\n".join(lines),
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert "30 points in 20 entries written to metricrelay:events:{*of4}" in done.stderr.decode()
    _assert_routed(private_redis.url, expected_per_run=2)  # one packed, one tags fragment


@contextlib.contextmanager
def _ingest(redis_url: str, *flags: str) -> Iterator[str]:
    """``metricrelay ingest`` on a free port; yields its URL (read from its log line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "metricrelay", "ingest", "--port", "0", "--redis-url", redis_url,
         *flags],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stderr is not None
    url = ""
    for line in process.stderr:  # bounded: the process logs its URL at start or exits
        found = re.search(rb"listening on (http://\S+)", line)
        if found:
            url = found.group(1).decode()
            break
    assert url, "ingest did not start"
    yield url
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert process.returncode == 0


@pytest.fixture
def ingest(private_redis: RedisServer) -> Iterator[str]:
    with _ingest(private_redis.url) as url:
        yield url


def test_ingest_routes_each_execution_to_its_shard(private_redis: RedisServer) -> None:
    with _ingest(private_redis.url, "--shards", "4") as url:
        for run in RUNS:
            body = orjson.dumps({"executionId": run, "metrics": [{"name": "loss", "value": 1}]})
            request = urllib.request.Request(
                f"{url}/v2/lm/metrics", data=body, method="PATCH",
                headers={"Content-Type": "application/merge-patch+json",
                         "AI-Resource-Group": "default"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert reply.status == 204
    _assert_routed(private_redis.url, expected_per_run=1)


def test_sap_sdk_in_cluster_mode_through_ingest_unchanged(
    private_redis: RedisServer,
    api: BackgroundServer,
    ingest: str,
    start_worker: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ai_core_sdk.ai_core_v2_client import AICoreV2Client  # noqa: PLC0415
    from ai_core_sdk.models import Metric, MetricLabel, MetricTag  # noqa: PLC0415
    from ai_core_sdk.tracking import Tracking  # noqa: PLC0415

    monkeypatch.setenv("AICORE_EXECUTION_ID", "run-incluster-1")
    monkeypatch.setenv("AICORE_TRACKING_ENDPOINT", ingest)
    moment = datetime(2026, 11, 23, 12, tzinfo=UTC)
    points = [
        Metric(
            name="Training Loss",
            value=1.0 / (s + 1),
            timestamp=moment + timedelta(seconds=s),
            step=s,
            labels=[MetricLabel(name="rank", value="0")],
        )
        for s in range(50)
    ]
    client = AICoreV2Client(
        base_url="http://unused.invalid/v2", auth_url="http://unused.invalid/oauth/token",
        client_id="unused", client_secret="unused", resource_group="default",
    )  # fmt: skip
    # sap-ai-sdk-core: AICORE_EXECUTION_ID is the default id; an explicit one is sent as given
    client.metrics.modify(metrics=points, tags=[MetricTag(name="stage", value="train")])
    Tracking().log_metrics(metrics=points[:1], artifact_name="model")
    client.metrics.modify(execution_id="run-explicit-1", metrics=points[:2])
    worker = start_worker(private_redis.url, api, burst=True)
    assert worker.process.wait(timeout=60) == 0, worker.log_text()
    resource = read_back(api, "run-incluster-1")
    assert len(resource["metrics"]) == 51  # the repeat of step 0 carries the artifact label
    artifact = {"name": "metrics.ai.sap.com/Artifact.name", "value": "model"}
    assert sum(artifact in m["labels"] for m in resource["metrics"]) == 1
    assert resource["tags"] == [{"name": "stage", "value": "train"}]
    assert [m["step"] for m in read_back(api, "run-explicit-1")["metrics"]] == [0, 1]


def test_ingest_refuses_invalid_bodies_with_the_contract_error_body(ingest: str) -> None:
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    body = orjson.dumps({"executionId": "run-x1", "metrics": [{"name": "loss", "value": "NaN"}]})
    request = urllib.request.Request(
        f"{ingest}/api/v1/metrics", data=body, method="PATCH",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    error = orjson.loads(refused.value.read())["error"]
    assert set(error) == {"code", "message", "requestId", "target", "details"}
    assert "metrics[0].value" in error["message"]
