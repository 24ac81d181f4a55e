"""Sharded streams on a real Redis Cluster with three worker processes (issue 10)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from tests.support.cluster_stack import ClusterStack, Written, assert_ledger

from metricrelay.keys import Keys

pytestmark = pytest.mark.integration

EXECUTIONS = [f"run-{n:03d}" for n in range(40)]
STEPS = 2500  # times 40 executions: 100k points


def test_100k_points_over_40_executions_on_a_cluster_with_three_workers(
    cluster_stack: ClusterStack,
) -> None:
    stack = cluster_stack
    # shards spread over the cluster's masters: the layout is worth sharding at all
    nodes = {stack.cluster.master_of_key(s.events).port for s in stack.keys.all_shards()}
    assert len(nodes) == 3
    for number in range(3):
        stack.start_worker(number)
    owners = stack.wait_balanced(3)  # 8 shards: 3 + 3 + 2
    assert sorted(Counter(owners.values()).values()) == [2, 3, 3]
    written = Written()
    stack.produce(written, EXECUTIONS, range(STEPS))  # while the workers run
    assert len(written.points) == 100_000
    stack.wait_drained(stack.keys.all_shards())
    assert_ledger(stack.stored(EXECUTIONS), written)
    assert stack.dead_letters() == 0
    assert stack.owners() == owners  # nobody lost a lease on the way
    status = stack.status("--shards", "8", "--cluster")
    assert [row["name"] for row in status["shards"]] == [f"{i}of8" for i in range(8)]
    assert sum(row["length"] for row in status["shards"]) == status["stream"]["length"] > 0
    assert status["group"]["pending"] == 0
    assert all(row["lag"] == 0 and row["pending"] == 0 for row in status["shards"])
    assert {row["name"]: row["owner"] for row in status["shards"]} == owners


def test_a_worker_killed_mid_run_hands_its_shards_over_in_order(
    cluster_stack: ClusterStack,
) -> None:
    stack = cluster_stack
    for number in range(3):
        stack.start_worker(number)
    owners = stack.wait_balanced(3)
    written = Written()
    stack.produce(written, EXECUTIONS, range(500))
    stack.wait_stored(EXECUTIONS, 2000)
    victim = stack.workers[0]
    victim.kill()  # SIGKILL: no drain, its leases stay until they expire
    stack.workers.remove(victim)
    stack.produce(written, EXECUTIONS, range(500, 1000))
    stack.wait_drained(stack.keys.all_shards(), timeout=120)
    assert_ledger(stack.stored(EXECUTIONS), written)
    after = stack.owners()
    orphaned = [shard for shard, owner in owners.items() if owner == "demo-worker-0"]
    assert orphaned and all(
        after[shard] in ("demo-worker-1", "demo-worker-2") for shard in orphaned
    )


def test_a_master_killed_mid_run_loses_nothing(cluster_stack: ClusterStack) -> None:
    stack = cluster_stack
    for number in range(3):
        stack.start_worker(number)
    stack.wait_balanced(3)
    written = Written()
    half = STEPS // 5
    stack.produce(written, EXECUTIONS, range(half))
    stack.cluster.wait_replicated()  # what producers wrote is on the replicas too
    stack.wait_stored(EXECUTIONS, 5000)  # the workers are busy delivering
    victim = stack.cluster.master_of_key(stack.keys.shard(0).events)
    more = Written()
    failed: list[BaseException] = []

    def produce_more() -> None:  # the rest, written while the master dies and is replaced
        try:
            stack.produce(more, EXECUTIONS, range(half, 2 * half))
        except BaseException as exc:
            failed.append(exc)

    producer = threading.Thread(target=produce_more, daemon=True)
    producer.start()
    promoted = stack.cluster.kill_master(victim)
    producer.join(120)
    assert not producer.is_alive()
    assert not failed, f"the producer gave up: {failed}"
    assert len(more.points) == len(written.points)
    assert promoted.alive() and promoted in stack.cluster.masters()
    stack.wait_drained(stack.keys.all_shards(), timeout=180)
    written.points |= more.points
    written.last_tag.update(more.last_tag)
    assert_ledger(stack.stored(EXECUTIONS), written)
    assert stack.dead_letters() == 0
    for worker in stack.workers:
        assert worker.process.poll() is None, f"{worker.name} died with the master"
    # after the failover, every worker still stops in time on SIGTERM (issue 14: one did not)
    deadline = 25.0 + 5.0  # METRICRELAY_DRAIN_DEADLINE's default, plus the exit grace
    for worker in stack.workers:
        started = time.monotonic()
        code = worker.stop(timeout=deadline + 2)  # SIGKILL after that: the code shows it
        took = time.monotonic() - started
        assert code == 0 and took <= deadline, f"{worker.name}: exit {code} after {took:.1f}s"


def test_changing_the_shard_count_live_drains_the_old_layout_first(
    cluster_stack: ClusterStack,
) -> None:
    """The README's procedure, 4 → 8 shards; nothing lost, every execution still in order."""
    stack = cluster_stack
    old, new = Keys("metricrelay", 4), Keys("metricrelay", 8)
    stack.keys = old
    first = [stack.start_worker(n) for n in range(2)]
    stack.wait_balanced(2)
    written = Written()
    stack.produce(written, EXECUTIONS, range(200), keys=old)
    stack.wait_drained(old.all_shards())
    # 1. workers roll (here: all at once, so a backlog builds up in the old layout meanwhile)
    for worker in first:
        assert stack.stop_worker(worker) == 0
    stack.produce(written, EXECUTIONS, range(200, 600), keys=old)
    stack.keys = new
    rolled = [stack.start_worker(n, METRICRELAY_DRAIN_SHARDS="4") for n in range(2, 4)]
    # 2. producers switch at once: both layouts hold entries of every execution
    stack.produce(written, EXECUTIONS, range(600, 1000), keys=new)
    # 3. the old layout drains first, then the new one is worked
    stack.wait_drained([*old.all_shards(), *new.all_shards()], timeout=180)
    # 4. workers roll once more, without the drain setting
    for worker in rolled:
        assert stack.stop_worker(worker) == 0
    stack.wait_logged([stack.start_worker(4)], "sharing 8 shards")
    stack.produce(written, EXECUTIONS, range(1000, 1200), keys=new)
    stack.wait_drained(new.all_shards())
    assert_ledger(stack.stored(EXECUTIONS), written)
    logs = "".join(w.log_path.read_text() for w in rolled)
    assert "the old shard layout is drained" in logs


def test_slots_moved_between_masters_mid_run_lose_nothing(cluster_stack: ClusterStack) -> None:
    """Redis Cluster resharding under load: clients get ASK while a slot's keys migrate and
    MOVED after it; the workers follow without losing a point or the order."""
    stack = cluster_stack
    for number in range(3):
        stack.start_worker(number)
    stack.wait_balanced(3)
    written = Written()
    stack.produce(written, EXECUTIONS, range(300))
    more = Written()
    failed: list[BaseException] = []

    def produce_more() -> None:
        try:
            stack.produce(more, EXECUTIONS, range(300, 900))
        except BaseException as exc:
            failed.append(exc)

    producer = threading.Thread(target=produce_more, daemon=True)
    producer.start()
    moved = 0
    for shard in stack.keys.all_shards()[:4]:
        source = stack.cluster.master_of_key(shard.events)
        target = next(m for m in stack.cluster.masters() if m is not source)
        stack.cluster.move_slot_of(shard.events, target, batch=3)
        assert stack.cluster.master_of_key(shard.events) is target
        moved += 1
    producer.join(120)
    assert not producer.is_alive() and not failed, failed
    assert moved == 4
    stack.wait_drained(stack.keys.all_shards())
    written.points |= more.points
    written.last_tag.update(more.last_tag)
    assert_ledger(stack.stored(EXECUTIONS), written)
    assert stack.dead_letters() == 0
    logs = "".join(w.log_path.read_text() for w in stack.workers)
    assert "Traceback" not in logs
