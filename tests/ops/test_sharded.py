"""Operator commands over sharded streams (METRICRELAY_SHARDS=4, and a drained layout of 2)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as redis_asyncio
from tests.support.dead_letters import KEYS, add_dead, fragment, letter

from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys
from metricrelay.ops.dead import DeadFilter
from metricrelay.ops.replay import ReplayPlan, replay
from metricrelay.relay.batching import Limits

pytestmark = pytest.mark.integration

FOUR = Keys(shards=4)
TWO = Keys(shards=2)
RUNS = [f"run-{i:02d}" for i in range(10)]
NOW = "2026-11-23T12:00:00.000000Z"


class Crash(Exception):
    """Stands for the process dying at the injected point."""


def _events(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"resource"]) for _, fields in client.xrange(stream)]


def _ids(client: redis.Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(stream)]


# --------------------------------------------------------------------------- status


def _sharded_state(client: redis.Redis) -> dict[str, int]:
    """One entry per run in its shard; on every shard a worker read everything and acked all
    but one entry; a dead letter per odd run. Returns entries per shard name."""
    per_shard: dict[str, int] = {}
    for run in RUNS:
        shard = FOUR.route("default", run)
        client.xadd(shard.events, {"resource": fragment(run, 2)})
        per_shard[shard.name] = per_shard.get(shard.name, 0) + 1
    for shard in FOUR.all_shards():
        client.xgroup_create(shard.events, shard.group, id="0", mkstream=True)
        read = client.xreadgroup(shard.group, f"w{shard.index}", {shard.events: ">"})
        ids = [entry_id for _, rows in read for entry_id, _ in rows]
        if len(ids) > 1:
            client.xack(shard.events, shard.group, *ids[1:])  # the first stays pending
    for run in RUNS[1::2]:
        dead = letter(fragment(run), Reason.EXHAUSTED)
        client.xadd(FOUR.route("default", run).dead, dead.fields())
    return per_shard


def test_status_adds_up_shards_and_lists_each(sync_redis: redis.Redis, cli: Any) -> None:
    per_shard = _sharded_state(sync_redis)
    # one more entry nobody read, on shard 0of4 (run-05's): lag 1 there, 0 elsewhere
    sync_redis.xadd(FOUR.route("default", "run-05").events, {"resource": fragment("run-05")})
    code, out, _ = cli("status", "--json", "--shards", "4")
    assert code == 0
    doc = orjson.loads(out)
    rows = {row["name"]: row for row in doc["shards"]}
    assert list(rows) == ["0of4", "1of4", "2of4", "3of4"]
    for name, row in rows.items():
        expected = per_shard.get(name, 0) + (name == "0of4")
        assert row["length"] == expected
        assert row["events"] == f"metricrelay:events:{{{name}}}"
        assert row["pending"] == min(per_shard.get(name, 0), 1)
        assert [c["name"] for c in row["consumers"]] == [f"w{name[0]}"]
    assert rows["0of4"]["lag"] == 1
    assert sum(row["lag"] for row in rows.values()) == 1
    assert [rows[n]["dead"] for n in rows] == [2, 2, 0, 1]  # runs 05 07 | 01 03 | - | 09
    assert doc["stream"]["key"] == "metricrelay:events:{*of4}"
    assert doc["stream"]["length"] == 11
    group = doc["group"]
    assert (group["lag"], group["lag_source"], group["pending"]) == (1, "redis", 4)
    assert group["last_delivered_id"] is None  # no one id stands for four streams
    assert len(group["consumers"]) == 4
    assert (doc["dead"]["key"], doc["dead"]["length"]) == ("metricrelay:dead:{*of4}", 5)
    assert doc["dead"]["by_reason"]["exhausted"] == 5
    backlog = {
        (e["execution_id"], e["pending"], e["undelivered"]) for e in doc["backlog"]["executions"]
    }
    assert ("run-05", 1, 1) in backlog or ("run-05", 0, 1) in backlog
    assert sum(e["pending"] for e in doc["backlog"]["executions"]) == 4
    # thresholds apply to the totals, as with one stream
    code, doc = _json(cli, "--shards", "4", "--max-pending", "3")
    assert (code, doc["thresholds"]["exceeded"]) == (2, ["pending"])
    assert rows["1of4"]["owner"] is None  # no worker holds a lease here
    sync_redis.set(FOUR.shard(1).lease, "worker-b")
    code, out, _ = cli("status", "--shards", "4")
    assert "SHARD  OWNER     LENGTH  LAG  PENDING  DEAD" in out
    assert "1of4   worker-b" in out
    assert "dead letters metricrelay:dead:{*of4}: 5" in out


def _json(cli: Any, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli("status", "--json", *args)
    return code, orjson.loads(out)


def test_status_reads_the_drained_layout_too(sync_redis: redis.Redis, cli: Any) -> None:
    sync_redis.xadd(FOUR.route("default", "run-00").events, {"resource": fragment("run-00")})
    for run in RUNS[:3]:  # left over in the old layout, nobody read them yet
        sync_redis.xadd(TWO.route("default", run).events, {"resource": fragment(run)})
    code, doc = _json(cli, "--shards", "4", "--drain-shards", "2", "--max-lag", "3")
    assert code == 2  # 1 + 3 undelivered: the old layout's backlog counts
    assert [row["name"] for row in doc["shards"]] == [
        "0of4",
        "1of4",
        "2of4",
        "3of4",
        "0of2",
        "1of2",
    ]
    assert [row["length"] for row in doc["shards"]] == [0, 0, 0, 1, 0, 3]
    assert (doc["stream"]["length"], doc["group"]["lag"]) == (4, 4)
    assert doc["group"]["lag_source"] == "no_group"
    assert doc["stream"]["key"] == "metricrelay:events:{*of4}, metricrelay:events:{*of2}"
    assert doc["stray"] == []
    # without --drain-shards nobody reads the old streams: stray, and an alert
    code, doc = _json(cli, "--shards", "4")
    assert (code, doc["stream"]["length"], len(doc["shards"])) == (2, 1, 4)
    assert doc["stray"] == [{"key": TWO.shard(1).events, "kind": "events", "length": 3}]
    assert doc["thresholds"]["exceeded"] == ["stray"]


def test_status_has_one_shard_row_with_one_stream(sync_redis: redis.Redis, cli: Any) -> None:
    sync_redis.xadd(KEYS.events, {"resource": fragment("run-a")})
    code, doc = _json(cli)
    assert code == 0
    [row] = doc["shards"]
    assert (row["name"], row["events"], row["length"], row["lag"]) == (
        "events", "metricrelay:events", 1, 1,
    )  # fmt: skip


# --------------------------------------------------------------------------- replay


def _old_and_new_letters(client: redis.Redis) -> dict[str, str]:
    """Dead letters of run-00…run-05 spread over the old (2) and the new (4) layout, plus raw
    bytes in both; returns each run's letter's dead stream."""
    where: dict[str, str] = {}
    for number, run in enumerate(RUNS[:6]):
        layout = TWO if number % 2 == 0 else FOUR
        stream = layout.route("default", run).dead
        client.xadd(stream, letter(fragment(run, 3), Reason.EXHAUSTED).fields())
        where[run] = stream
    client.xadd(TWO.shard(1).dead, letter(b"\xffraw old", Reason.POISON).fields())
    client.xadd(FOUR.shard(2).dead, letter(b"\xffraw new", Reason.POISON).fields())
    return where


def test_replay_routes_both_layouts_into_todays_shards(sync_redis: redis.Redis, cli: Any) -> None:
    where = _old_and_new_letters(sync_redis)
    assert len(set(where.values())) >= 4  # the letters really are spread
    code, out, _ = cli("replay", "--json", "--shards", "4", "--drain-shards", "2")
    assert code == 0
    document = orjson.loads(out)
    assert document["summary"]["moved"] == 8
    assert document["summary"]["fragments"] == 6
    letters = {row["id"].split("/")[0] for row in document["letters"]}
    assert letters >= {"0of2", "1of2"}  # qualified ids of both layouts
    for row in document["letters"]:
        if row["execution_id"] is not None:
            assert row["to"] == FOUR.route("default", row["execution_id"]).name
    for run in RUNS[:6]:
        target = FOUR.route("default", run)
        for shard in FOUR.all_shards():
            mine = [e for e in _events(sync_redis, shard.events) if e["executionId"] == run]
            assert len(mine) == (1 if shard == target else 0), (run, shard.name)
        [event] = [e for e in _events(sync_redis, target.events) if e["executionId"] == run]
        assert [m["step"] for m in event["metrics"]] == [0, 1, 2]
    for shard in TWO.all_shards():  # the old layout is empty: nothing left to drain
        assert sync_redis.xlen(shard.dead) == 0
        assert sync_redis.xlen(shard.events) == 0
    # raw bytes cannot be routed: the old layout's goes to 0of4, today's stays on its shard
    redead = {s.name: _dead_resources(sync_redis, s.dead) for s in FOUR.all_shards()}
    assert redead == {"0of4": [b"\xffraw old"], "1of4": [], "2of4": [b"\xffraw new"], "3of4": []}


def _dead_resources(client: redis.Redis, stream: str) -> list[bytes]:
    return [fields[b"resource"] for _, fields in client.xrange(stream)]


async def test_replay_appends_before_it_deletes_across_layouts(
    redis_client: redis_asyncio.Redis, sync_redis: redis.Redis
) -> None:
    source = TWO.route("default", "run-04")  # 0of2 → today's 2of4
    target = FOUR.route("default", "run-04")
    assert source.index != target.index
    sync_redis.xadd(source.dead, letter(fragment("run-04", 2), Reason.EXHAUSTED).fields())

    def crash(plan: ReplayPlan) -> None:
        assert plan.destination == target
        raise Crash

    sources = [*FOUR.all_shards(), *TWO.all_shards()]
    options: dict[str, Any] = {
        "limits": Limits(), "default_resource_group": "default", "failed_at": NOW,
        "sources": sources,
    }  # fmt: skip
    with pytest.raises(Crash):
        await replay(redis_client, FOUR, DeadFilter(), after_append=crash, **options)
    assert sync_redis.xlen(source.dead) == 1  # still dead…
    assert sync_redis.xlen(target.events) == 1  # …and already appended where it belongs
    summary = await replay(redis_client, FOUR, DeadFilter(), **options)
    assert summary.moved == 1
    assert (sync_redis.xlen(source.dead), sync_redis.xlen(target.events)) == (0, 2)


# --------------------------------------------------------------------------- dead


def _same_id_on_two_shards(client: redis.Redis) -> None:
    """Letter 1000-0 on 0of4 (run-00) and on 2of4 (run-01); 2000-0 on 3of4 (run-05)."""
    for run, entry_id in (("run-01", "1000-0"), ("run-00", "1000-0"), ("run-05", "2000-0")):
        dead = DeadLetter(fragment(run), Reason.REJECTED, f"bad {run}", ["1-0"])
        client.xadd(FOUR.route("other", run).dead, dead.fields(), id=entry_id)


def test_dead_list_show_purge_with_qualified_ids(sync_redis: redis.Redis, cli: Any) -> None:
    _same_id_on_two_shards(sync_redis)
    code, out, _ = cli("dead list", "--json", "--shards", "4")
    assert code == 0
    listed = orjson.loads(out)
    assert [row["id"] for row in listed] == ["0of4/1000-0", "2of4/1000-0", "3of4/2000-0"]
    assert [row["shard"] for row in listed] == ["0of4", "2of4", "3of4"]
    assert [row["execution_id"] for row in listed] == ["run-00", "run-01", "run-05"]
    code, out, _ = cli("dead list", "--shards", "4", "--until", "1000-0")
    assert "0of4/1000-0" in out and "2of4/1000-0" in out and "2000-0" not in out

    code, out, _ = cli("dead show", "0of4/1000-0", "--shards", "4", "--json")
    assert code == 0
    shown = orjson.loads(out)
    assert (shown["id"], shown["execution_id"], shown["error"]) == (
        "0of4/1000-0", "run-00", "bad run-00",
    )  # fmt: skip
    code, _, err = cli("dead show", "1000-0", "--shards", "4")
    assert code == 1
    assert "name the shard as <shard>/<id>" in err
    code, _, err = cli("dead show", "1of4/1000-0", "--shards", "4")
    assert code == 1
    assert "no dead letter 1of4/1000-0" in err
    assert cli("dead show", "9of4/1000-0", "--shards", "4")[0] == 1

    code, out, _ = cli("dead purge", "--yes", "--shards", "4", "0of4/1000-0")
    assert (code, out.strip()) == (0, "deleted 1 dead letter(s) from metricrelay:dead:{*of4}")
    assert _ids(sync_redis, FOUR.shard(0).dead) == []
    assert _ids(sync_redis, FOUR.shard(2).dead) == ["1000-0"]  # same id, other shard: kept
    code, _, err = cli("dead purge", "--yes", "--shards", "4", "0of4/1000-0", "3of4/2000-0")
    assert code == 1  # gone already: a list with a missing id deletes nothing
    assert "no dead letter 0of4/1000-0" in err
    assert _ids(sync_redis, FOUR.shard(3).dead) == ["2000-0"]
    code, out, _ = cli("dead purge", "--yes", "--shards", "4", "--reason", "rejected")
    assert (code, out.split()[:2]) == (0, ["deleted", "2"])  # one on 2of4, one on 3of4
    assert all(sync_redis.xlen(s.dead) == 0 for s in FOUR.all_shards())


def test_one_stream_keeps_plain_ids_also_for_purge_by_id(sync_redis: redis.Redis, cli: Any) -> None:
    add_dead(sync_redis, letter(fragment("run-a"), Reason.REJECTED), "1000-0")
    add_dead(sync_redis, letter(fragment("run-b"), Reason.REJECTED), "2000-0")
    listed = orjson.loads(cli("dead list", "--json")[1])
    assert [(row["id"], "shard" in row) for row in listed] == [("1000-0", False), ("2000-0", False)]
    code, out, _ = cli("dead purge", "--yes", "2000-0")
    assert (code, out.strip()) == (0, "deleted 1 dead letter(s) from metricrelay:dead")
    assert _ids(sync_redis, KEYS.dead) == ["1000-0"]
