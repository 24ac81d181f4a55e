"""The embedded Redis Cluster: 3 masters + 3 replicas, a master crash loses nothing, stop reaps."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode as StartupNode
from redis.cluster import RedisCluster

from metricrelay.devtools import embedded_cluster
from metricrelay.devtools.embedded_cluster import SLOTS, ClusterNode, RedisClusterServer

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    with RedisClusterServer(tmp_path) as server:
        yield server


def client(cluster: RedisClusterServer) -> RedisCluster:
    nodes = [StartupNode(host, port) for host, port in cluster.startup_nodes]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


def gone(process: subprocess.Popen[bytes]) -> bool:
    """Exited and reaped: no zombie left under this pid."""
    if process.returncode is None:
        return False
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_three_masters_three_replicas_every_slot(cluster: RedisClusterServer) -> None:
    masters, replicas = cluster.masters(), cluster.replicas()
    assert len(masters) == 3
    assert len(replicas) == 3
    assert {node.port for node in masters}.isdisjoint(node.port for node in replicas)
    assert 6379 not in {node.port for node in cluster.nodes}
    # every node, so that a client finds the cluster while one of them is down
    assert cluster.url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{node.port}" for node in cluster.nodes
    )
    assert sorted(cluster.startup_nodes) == sorted(("127.0.0.1", n.port) for n in cluster.nodes)
    for node in cluster.nodes:
        assert node.log.is_file()
        assert (node.directory / "nodes.conf").is_file()
        covered = 0
        for first, last, master, *others in node.client.cluster("slots"):
            assert master[1] in {m.port for m in masters}
            assert len(others) == 1
            covered += last - first + 1
        assert covered == SLOTS


def test_master_crash_loses_nothing_written(cluster: RedisClusterServer) -> None:
    keys: dict[int, str] = {}  # master port -> a hash-tagged key it serves
    for tag in range(100):
        key = f"metricrelay:{{run-{tag}}}:events"
        keys.setdefault(cluster.master_of_key(key).port, key)
    assert len(keys) == 3
    writer = client(cluster)
    for key in keys.values():
        writer.set(key, f"value of {key}")
    writer.close()
    cluster.wait_replicated()

    victim = cluster.master_of_key(next(iter(keys.values())))
    process = victim.process
    assert process is not None
    replicas_before = {node.port for node in cluster.replicas()}
    promoted = cluster.kill_master(victim)

    assert not victim.alive()
    assert gone(process)
    assert promoted.port in replicas_before
    assert promoted in cluster.masters()
    assert victim not in cluster.masters()
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 2
    for key in keys.values():
        assert cluster.master_of_key(key).alive()
    lost_key = keys[victim.port]
    assert promoted.client.get(lost_key) == f"value of {lost_key}"
    reader = client(cluster)
    assert {key: reader.get(key) for key in keys.values()} == {
        key: f"value of {key}" for key in keys.values()
    }
    reader.close()


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = RedisClusterServer(tmp_path).start()
    processes = [node.process for node in server.nodes]
    server.stop()
    server.stop()  # idempotent
    assert all(process is not None and gone(process) for process in processes)
    assert not any(node.alive() for node in server.nodes)


def test_a_failed_start_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ClusterNode] = []
    real_start = ClusterNode.start

    def recording_start(node: ClusterNode, timeout: float = 10.0) -> ClusterNode:
        started.append(node)
        return real_start(node, timeout)

    monkeypatch.setattr(ClusterNode, "start", recording_start)
    monkeypatch.setattr(embedded_cluster, "find_redis_cli", lambda: "false")  # create fails
    with pytest.raises(RuntimeError, match="failed"):
        RedisClusterServer(tmp_path).start()
    assert len(started) == 6
    assert not any(node.alive() for node in started)
