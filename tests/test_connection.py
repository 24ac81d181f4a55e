"""Cluster URLs: the scheme picks the cluster client; several nodes may be named."""

from __future__ import annotations

import pytest

from metricrelay.connection import is_cluster, node_url, startup_nodes
from metricrelay.errors import ConfigError
from metricrelay.settings import Settings


def test_the_scheme_or_the_flag_selects_the_cluster_client() -> None:
    assert is_cluster("redis+cluster://r:6379")
    assert is_cluster("rediss+cluster://r:6379")
    assert not is_cluster("redis://r:6379")
    assert is_cluster("redis://r:6379", cluster=True)
    assert node_url("rediss+cluster://u:p@r:7000/0") == "rediss://u:p@r:7000/0"


def test_several_nodes_keep_the_credentials_on_the_first() -> None:
    first, nodes = startup_nodes("redis+cluster://:s3cret@r-0:7000, r-1:7001,r-2")
    assert first == "redis://:s3cret@r-0:7000"
    assert nodes == [("r-0", 7000), ("r-1", 7001), ("r-2", 6379)]
    with pytest.raises(ValueError, match="host:port"):
        startup_nodes("redis+cluster://r-0:x")


def test_settings_take_cluster_urls_and_check_the_shard_layout() -> None:
    settings = Settings.from_sources(
        {"redis_url": "redis+cluster://a:1,b:2", "shards": 8, "only_shards": "0-3,6"}, env={}
    )
    assert settings.owned_shards() == [0, 1, 2, 3, 6]
    assert settings.keys().shard(6).events == "metricrelay:events:{6of8}"
    with pytest.raises(ConfigError, match="METRICRELAY_DRAIN_SHARDS"):
        Settings.from_sources({}, env={"METRICRELAY_SHARDS": "4", "METRICRELAY_DRAIN_SHARDS": "4"})
    with pytest.raises(ConfigError, match="outside 0-3"):
        Settings.from_sources({"shards": 4, "only_shards": "2-5"}, env={})
    with pytest.raises(ConfigError, match="METRICRELAY_SHARDS"):
        Settings.from_sources({}, env={"METRICRELAY_SHARDS": "0"})
