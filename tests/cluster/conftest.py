"""The cluster suite's fixture: a real Redis Cluster (3 masters + 3 replicas) and the reference
API, for worker processes to be started on (tests.support.cluster_stack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.cluster_stack import ClusterStack

from metricrelay.devtools.embedded_cluster import RedisClusterServer
from metricrelay.keys import Keys


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Iterator[ClusterStack]:
    with RedisClusterServer(tmp_path / "cluster") as cluster:
        stack = ClusterStack(tmp_path, cluster, Keys("metricrelay", 8))
        stack.start_api()
        try:
            yield stack
        finally:
            stack.stop()
