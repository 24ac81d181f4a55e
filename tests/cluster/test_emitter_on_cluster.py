"""The Emitter on a Redis Cluster: routed by execution, and its delivery barrier (issue 10)."""

from __future__ import annotations

import threading
import time

import pytest
from tests.support.cluster_stack import ClusterStack
from tests.support.waiting import until_sync

from metricrelay.producer.emitter import Emitter

pytestmark = pytest.mark.integration


def test_emitters_route_by_execution_and_wait_for_delivery(cluster_stack: ClusterStack) -> None:
    stack = cluster_stack
    stack.start_worker(0)
    executions = ["emit-a001", "emit-b002", "emit-c003"]
    reports = {}
    for execution in executions:
        emitter = Emitter(execution, redis_url=stack.cluster.url, shards=8, handle_sigterm=False)
        try:
            assert emitter.config.keys == stack.keys.route("default", execution)
            for step in range(500):
                emitter.log_metric("loss", 1.0 / (step + 1), step=step)
            reports[execution] = emitter.flush(60, wait_delivered=True)
        finally:
            emitter.close()
    assert {e: r.accepted for e, r in reports.items()} == dict.fromkeys(executions, 500)
    stored = stack.stored(executions)
    assert len(stored.points) == 1500
    client = stack.client()
    try:  # each execution's entries are in its own shard's stream, none elsewhere
        for execution in executions:
            home = stack.keys.route("default", execution)
            for shard in stack.keys.all_shards():
                rows = client.xrange(shard.events) if client.exists(shard.events) else []
                mine = [r for r in rows if execution.encode() in r[1][b"resource"]]
                assert bool(mine) == (shard == home) or not rows
    finally:
        client.close()


def test_an_emitter_keeps_logging_through_a_failover(
    cluster_stack: ClusterStack, caplog: pytest.LogCaptureFixture
) -> None:
    """A master dies under a running Emitter: its writes to that master's slots fail until the
    replica takes over, are retried, and every point is delivered."""
    stack = cluster_stack
    stack.start_worker(0)
    victim_shard = stack.keys.shard(0)
    execution = next(
        f"fo-{n:04d}"
        for n in range(1000)
        if stack.keys.route("default", f"fo-{n:04d}") == victim_shard
    )
    victim = stack.cluster.master_of_key(victim_shard.events)
    with Emitter(execution, redis_url=stack.cluster.url, shards=8, handle_sigterm=False) as emitter:
        for step in range(300):
            emitter.log_metric("loss", 1.0, step=step)
        emitter.flush(30)
        stack.cluster.wait_replicated()  # what is in Redis is on the replica too
        failover = threading.Thread(target=stack.cluster.kill_master, args=(victim,))
        failover.start()
        # log the rest only once the master is gone
        until_sync(lambda: not victim.alive(), timeout=10, interval=0.01)
        for step in range(300, 600):
            emitter.log_metric("loss", 1.0, step=step)
            time.sleep(0.005)  # spread over the failover (about 3 s)
        failover.join(60)
        report = emitter.flush(90, wait_delivered=True)
    assert report.accepted == 600
    assert stack.stored([execution]).points.total() == 600
    # the failover did reach the emitter: some writes failed, were spooled and replayed
    assert any("cannot write to Redis" in r.getMessage() for r in caplog.records)
