"""`metricrelay status`: exact JSON for a known stream state, lag fallback, thresholds, errors,
streams nobody reads."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as redis_asyncio
from tests.support.dead_letters import KEYS, add_dead, fragment, letter

from metricrelay.deadletter import Reason
from metricrelay.devtools.embedded import RedisServer, free_port
from metricrelay.keys import Keys
from metricrelay.ops.status import gather

pytestmark = pytest.mark.integration


def _known_state(client: redis.Redis) -> None:
    """7 entries; 1000-0 acked, 2000-0 and 3000-0 pending with c1, 4000-0… undelivered."""
    events = KEYS.events
    client.xadd(events, {"resource": fragment("run-a", 2)}, id="1000-0")
    client.xadd(events, {"resource": fragment("run-a", 2)}, id="2000-0")
    client.xadd(events, {"resource": fragment("run-b", 1, group=None)}, id="3000-0")
    client.xadd(events, {"resource": b"not json"}, id="4000-0")
    client.xadd(events, {"resource": fragment("run-a", 2)}, id="5000-0")
    client.xadd(events, {"resource": fragment("run-b", 1)}, id="6000-0")
    client.xadd(events, {"resource": fragment("run-c", 3, group="other")}, id="7000-0")
    client.xgroup_create(events, KEYS.group, id="0")
    client.xreadgroup(KEYS.group, "c1", {events: ">"}, count=3)
    client.xack(events, KEYS.group, "1000-0")
    add_dead(client, letter(fragment("run-a"), Reason.INVALID), "10-0")
    add_dead(client, letter(fragment("run-a"), Reason.INVALID), "20-0")
    add_dead(client, letter(fragment("run-b"), Reason.EXHAUSTED), "30-0")
    add_dead(client, letter(b"\xff raw", Reason.POISON), "40-0")


def _status(cli: Any, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli("status", "--json", *args)
    return code, orjson.loads(out)


def test_json_for_a_known_state(sync_redis: redis.Redis, cli: Any) -> None:
    _known_state(sync_redis)
    code, doc = _status(cli)
    assert code == 0
    assert doc["schema"] == 1
    assert doc["stream"] == {
        "key": "metricrelay:events", "length": 7, "first_id": "1000-0", "last_id": "7000-0",
    }  # fmt: skip
    group = doc["group"]
    consumers = group.pop("consumers")
    assert group.pop("oldest_pending_age_ms") > 0  # produced at second 2 of 1970
    assert group.pop("oldest_pending_idle_ms") >= 0
    assert group == {
        "name": "metricrelay",
        "exists": True,
        "last_delivered_id": "3000-0",
        "lag": 4,
        "lag_source": "redis",
        "pending": 2,
        "oldest_pending_id": "2000-0",
    }
    assert [(c["name"], c["pending"]) for c in consumers] == [("c1", 2)]
    assert doc["backlog"] == {
        "scanned": 6,  # 2 pending + 4 undelivered
        "capped": False,
        "missing": 0,
        "executions": [
            {"resource_group": "default", "execution_id": "run-a",
             "pending": 1, "undelivered": 1, "points": 4},
            {"resource_group": "default", "execution_id": "run-b",
             "pending": 1, "undelivered": 1, "points": 2},
            {"resource_group": None, "execution_id": None,
             "pending": 0, "undelivered": 1, "points": 0},
            {"resource_group": "other", "execution_id": "run-c",
             "pending": 0, "undelivered": 1, "points": 3},
        ],
    }  # fmt: skip
    assert doc["dead"] == {
        "key": "metricrelay:dead",
        "length": 4,
        "scanned": 4,
        "capped": False,
        "by_reason": {"invalid": 2, "rejected": 0, "too_large": 0, "exhausted": 1, "poison": 1},
        "by_execution": [
            {"resource_group": "default", "execution_id": "run-a", "count": 2},
            {"resource_group": "default", "execution_id": "run-b", "count": 1},
            {"resource_group": None, "execution_id": None, "count": 1},
        ],
    }
    assert doc["thresholds"] == {"max_lag": None, "max_pending": None, "exceeded": []}


async def test_age_is_measured_from_the_entry_id(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis
) -> None:
    sync = redis.Redis.from_url(redis_server.url)
    _known_state(sync)
    sync.close()
    status = await gather(
        redis_client, KEYS, default_resource_group="default", scan_limit=100, now_ms=9_500
    )
    assert status.oldest_pending_age_ms == 7_500  # 9.5 s minus the 2000 ms of id 2000-0


def test_thresholds_give_exit_code_2(sync_redis: redis.Redis, cli: Any) -> None:
    _known_state(sync_redis)  # lag 4, pending 2
    assert _status(cli, "--max-lag", "4", "--max-pending", "2")[0] == 0
    code, doc = _status(cli, "--max-lag", "3")
    assert (code, doc["thresholds"]["exceeded"]) == (2, ["lag"])
    code, doc = _status(cli, "--max-pending", "1", "--max-lag", "3")
    assert (code, doc["thresholds"]["exceeded"]) == (2, ["lag", "pending"])
    code, out, _ = cli("status", "--max-pending", "1")
    assert code == 2
    assert "ALERT: pending 2 > 1" in out


def test_lag_is_counted_when_redis_cannot_tell(sync_redis: redis.Redis, cli: Any) -> None:
    _known_state(sync_redis)
    sync_redis.xdel(KEYS.events, "5000-0")  # a deleted undelivered entry: XINFO lag is nil
    assert sync_redis.xinfo_groups(KEYS.events)[0]["lag"] is None
    code, doc = _status(cli)
    assert (doc["group"]["lag"], doc["group"]["lag_source"]) == (3, "scan")
    # a scan limit below the lag gives a lower bound, and says so
    code, doc = _status(cli, "--scan-limit", "2")
    assert (doc["group"]["lag"], doc["group"]["lag_source"]) == (2, "scan_capped")
    assert doc["backlog"]["capped"] is True
    # …but a --max-lag check always counts far enough to decide
    code, doc = _status(cli, "--scan-limit", "1", "--max-lag", "2")
    assert (code, doc["group"]["lag"], doc["group"]["lag_source"]) == (2, 3, "scan")
    code, doc = _status(cli, "--scan-limit", "1", "--max-lag", "3")
    assert (code, doc["group"]["lag"]) == (0, 3)


def test_a_lag_redis_miscounts_is_corrected_by_the_scan(sync_redis: redis.Redis, cli: Any) -> None:
    """Redis 7.0 was seen to report a lag with nothing left to deliver (after slot migrations
    and a failover on a cluster); the same state, made with SETID's ENTRIESREAD: status and
    its --max-lag check follow the entries, not the miscount."""
    _known_state(sync_redis)
    sync_redis.execute_command("XGROUP", "SETID", KEYS.events, KEYS.group, "$", "ENTRIESREAD", "0")
    assert sync_redis.xinfo_groups(KEYS.events)[0]["lag"] == 7  # yet nothing is undelivered
    code, doc = _status(cli, "--max-lag", "0")
    assert (code, doc["group"]["lag"], doc["group"]["lag_source"]) == (0, 0, "scan")
    sync_redis.xadd(KEYS.events, {"resource": fragment("run-a", 2)}, id="8000-0")
    code, doc = _status(cli, "--max-lag", "0")
    assert (code, doc["group"]["lag"], doc["group"]["lag_source"]) == (2, 1, "scan")


def test_scans_are_bounded_and_say_so(sync_redis: redis.Redis, cli: Any) -> None:
    _known_state(sync_redis)
    code, doc = _status(cli, "--scan-limit", "1")
    assert code == 0
    assert doc["group"]["lag"] == 4  # Redis's own count: exact whatever the scan limit
    assert doc["backlog"]["scanned"] == 2  # one pending, one undelivered
    assert doc["backlog"]["capped"] is True
    assert (doc["dead"]["length"], doc["dead"]["scanned"], doc["dead"]["capped"]) == (4, 1, True)
    assert doc["dead"]["by_reason"]["poison"] == 1  # the newest dead letters are counted


def test_before_any_worker_ran(sync_redis: redis.Redis, cli: Any) -> None:
    code, doc = _status(cli, "--max-lag", "0")
    assert code == 0
    assert doc["group"]["exists"] is False
    assert (doc["stream"]["length"], doc["group"]["lag"], doc["dead"]["length"]) == (0, 0, 0)
    sync_redis.xadd(KEYS.events, {"resource": fragment("run-a")})
    code, doc = _status(cli, "--max-lag", "0")
    assert (code, doc["group"]["lag"], doc["group"]["lag_source"]) == (2, 1, "no_group")


def test_terminal_table(sync_redis: redis.Redis, cli: Any) -> None:
    _known_state(sync_redis)
    code, out, _ = cli("status", "--max-lag", "10")
    assert code == 0
    assert "lag 4, pending 2" in out
    assert "CONSUMER" in out and "c1" in out
    assert "RESOURCE GROUP  EXECUTION  PENDING  UNDELIVERED  POINTS" in out
    assert "dead letters metricrelay:dead: 4" in out
    assert "OK: lag 4 <= 10" in out


def test_unreachable_redis_is_exit_1_with_a_message() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "status", "--redis-url", url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach Redis at redis://:**********@127.0.0.1" in done.stderr
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr


def test_streams_of_another_layout_are_found_and_alert(sync_redis: redis.Redis, cli: Any) -> None:
    """Workers on one stream, a producer on eight shards: its entries wait where nobody reads.
    Only streams named as some layout names them, holding entries, count."""
    eight = Keys(shards=8)
    sync_redis.xadd(KEYS.events, {"resource": fragment("run-a")})  # in play
    sync_redis.xadd(eight.shard(3).events, {"resource": fragment("run-b")})
    sync_redis.xadd(eight.shard(3).events, {"resource": fragment("run-b")})
    dead = letter(fragment("run-c"), Reason.EXHAUSTED)
    sync_redis.xadd(eight.shard(5).dead, dead.fields())
    sync_redis.xadd(eight.shard(0).events, {"resource": fragment("run-d")})
    sync_redis.xtrim(eight.shard(0).events, maxlen=0)  # drained and trimmed: empty, not listed
    sync_redis.xadd("metricrelay:eventsource", {"resource": b"x"})  # not a name of ours
    sync_redis.set("metricrelay:events:{1of8}:note", "not a stream")
    sync_redis.xadd("other:events:{3of8}", {"resource": b"x"})  # another prefix
    code, doc = _status(cli)
    assert code == 2
    assert doc["stray"] == [
        {"key": "metricrelay:events:{3of8}", "kind": "events", "length": 2},
        {"key": "metricrelay:dead:{5of8}", "kind": "dead", "length": 1},
    ]
    assert doc["thresholds"]["exceeded"] == ["stray"]
    code, out, _ = cli("status")
    assert code == 2
    assert "STRAY STREAM" in out
    assert [line.split() for line in out.splitlines() if "{3of8}" in line] == [
        ["metricrelay:events:{3of8}", "events", "2"]
    ]
    assert "ALERT: 2 entries wait in event streams no worker reads" in out
    # the same streams are in play for workers on eight shards: nothing stray then, but the
    # one stream is (its entry waits for nobody)
    code, doc = _status(cli, "--shards", "8")
    assert doc["stray"] == [{"key": "metricrelay:events", "kind": "events", "length": 1}]
    sync_redis.delete(KEYS.events, eight.shard(3).events)
    code, doc = _status(cli)  # stray dead letters alone are listed, but no alert
    assert (code, [s["kind"] for s in doc["stray"]], doc["thresholds"]["exceeded"]) == (
        0,
        ["dead"],
        [],
    )


def test_status_names_the_owner_of_the_one_stream_and_says_when_redis_is_full(
    sync_redis: redis.Redis, cli: Any
) -> None:
    _known_state(sync_redis)
    sync_redis.set(Keys().shard(0).lease, "worker-a-17")
    code, doc = _status(cli)
    assert code == 0 and doc["shards"][0]["owner"] == "worker-a-17"
    assert doc["memory"]["full"] is False
    sync_redis.config_set("maxmemory-policy", "noeviction")
    sync_redis.config_set("maxmemory", 1)
    try:
        code, doc = _status(cli)
        assert code == 2 and doc["memory"]["full"] is True
        assert "redis_full" in doc["thresholds"]["exceeded"]
        code, text, _ = cli("status")
        assert "owner    worker-a-17" in text
        assert "REDIS IS FULL" in text and "redis is full (maxmemory reached)" in text
    finally:
        sync_redis.config_set("maxmemory", 0)
