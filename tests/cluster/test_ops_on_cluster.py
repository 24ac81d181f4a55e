"""`metricrelay replay` and `dead` on a Redis Cluster: letters of every shard back to the shard
their execution routes to (issue 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest
from tests.support.cluster_stack import ClusterStack

from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys
from metricrelay.timestamps import format_utc

pytestmark = pytest.mark.integration


def cli(stack: ClusterStack, *argv: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICRELAY_")}
    env["METRICRELAY_REDIS_URL"] = stack.cluster.url
    return subprocess.run(
        [sys.executable, "-m", "metricrelay", *argv],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("shards", [1, 8])
def test_replay_on_a_cluster_routes_letters_to_their_executions_shard(
    cluster_stack: ClusterStack, shards: int
) -> None:
    stack = cluster_stack
    keys = Keys("metricrelay", shards)
    executions = [f"replay-{n:03d}" for n in range(12)]
    client = stack.client()
    try:
        for number, execution in enumerate(executions):  # letters in the "wrong" shards
            fragment = {
                "executionId": execution,
                "metrics": [{"name": "loss", "value": 1.0, "step": number}],
            }
            letter = DeadLetter(
                orjson.dumps(fragment),
                Reason.EXHAUSTED,
                "API down",
                ["1-0"],
                503,
                3,
                format_utc(datetime.now(UTC)),
            )
            client.xadd(keys.shard(number % shards).dead, letter.fields())
        done = cli(stack, "replay", "--shards", str(shards), "--json")
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        for shard in keys.all_shards():
            assert client.xlen(shard.dead) == 0
        for execution in executions:
            home = keys.route("default", execution).events
            rows = client.xrange(home)
            assert any(execution.encode() in fields[b"resource"] for _, fields in rows)
    finally:
        client.close()
    stack.keys = keys
    stack.start_worker(0)
    stack.wait_drained(keys.all_shards())
    assert len(stack.stored(executions).points) == len(executions)


def test_status_finds_streams_nobody_reads_on_every_master(cluster_stack: ClusterStack) -> None:
    """Producers still on four shards, workers on eight: status scans every master."""
    stack = cluster_stack
    four = Keys("metricrelay", 4)
    masters = {stack.cluster.master_of_key(shard.events).port for shard in four.all_shards()}
    assert len(masters) > 1  # the scan has to visit more than one node to find them all
    client = stack.client()
    try:
        for shard in four.all_shards():
            client.xadd(shard.events, {"resource": b'{"executionId": "late-producer"}'})
    finally:
        client.close()
    done = cli(stack, "status", "--shards", "8", "--json")
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    document = orjson.loads(done.stdout)
    assert document["stray"] == [
        {"key": shard.events, "kind": "events", "length": 1} for shard in four.all_shards()
    ]
    assert document["thresholds"]["exceeded"] == ["stray"]
    done = cli(stack, "status", "--shards", "8", "--drain-shards", "4", "--json")
    assert done.returncode == 0  # in play while draining: read by the workers, not stray
    assert orjson.loads(done.stdout)["stray"] == []
