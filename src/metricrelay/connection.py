"""Redis clients from a URL: a single node, or a Redis Cluster for ``redis+cluster://`` (and
``rediss+cluster://``) URLs or when asked with ``cluster=True``.

The cluster client (redis-py's ``RedisCluster``) learns the slot map from any node given, follows
MOVED and ASK redirections, and re-learns the map when a node fails and a replica is promoted.
A cluster URL may name several nodes, ``redis+cluster://:pw@h1:7000,h2:7000,h3:7000``: a client
that starts while one of them is down still finds the cluster through the others.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as redis_asyncio
import redis.asyncio.cluster as async_cluster
import redis.cluster as sync_cluster
from redis import exceptions

__all__ = [
    "CLUSTER_SCHEMES",
    "REDIS_UNAVAILABLE",
    "async_client",
    "is_cluster",
    "node_url",
    "startup_nodes",
    "sync_client",
]

CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# What a client raises while a node is away or the cluster is re-electing a master: worth
# retrying, never a reason to drop or dead-letter anything.
REDIS_UNAVAILABLE: Final = (
    exceptions.ConnectionError,
    exceptions.TimeoutError,
    exceptions.ClusterError,
    exceptions.TryAgainError,
    exceptions.RedisClusterException,
    OSError,
)


def is_cluster(url: str, cluster: bool = False) -> bool:
    return cluster or urlsplit(url).scheme in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """The URL with a ``+cluster`` scheme turned into the plain one redis-py parses."""
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme)
    return url if plain is None else urlunsplit(parts._replace(scheme=plain))


def startup_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The URL with its first node only, and every (host, port) it names."""
    parts = urlsplit(node_url(url))
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:  # no port given
            host, port = port, "6379"
        try:
            nodes.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ValueError(f"cluster URL: {item!r} is not host:port") from None
    first = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts.split(',')[0].strip()}"))
    return first, nodes


def async_client(url: str, *, cluster: bool = False, **options: Any) -> Any:
    """An asyncio client: ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``."""
    if is_cluster(url, cluster):
        first, nodes = startup_nodes(url)
        more = [async_cluster.ClusterNode(host, port) for host, port in nodes[1:]]
        if more:
            options["startup_nodes"] = more
        return async_cluster.RedisCluster.from_url(first, **options)
    return redis_asyncio.Redis.from_url(url, **options)


def sync_client(url: str, *, cluster: bool = False, **options: Any) -> Any:
    """A blocking client: ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    if is_cluster(url, cluster):
        first, nodes = startup_nodes(url)
        node: Any = sync_cluster.ClusterNode  # untyped in redis-py
        more = [node(host, port) for host, port in nodes[1:]]
        if more:
            options["startup_nodes"] = more
        return sync_cluster.RedisCluster.from_url(first, **options)
    return redis.Redis.from_url(url, **options)
