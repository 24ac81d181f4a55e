"""Redis clients from a URL: a single node, or a Redis Cluster for ``redis+cluster://`` (and
``rediss+cluster://``) URLs or when asked with ``cluster=True``.

The cluster client (redis-py's ``RedisCluster``) learns the slot map from any node given, follows
MOVED and ASK redirections, and re-learns the map when a node fails and a replica is promoted.
A cluster URL may name several nodes, ``redis+cluster://:pw@h1:7000,h2:7000,h3:7000``: a client
that starts while one of them is down still finds the cluster through the others.

An asyncio client sends a command again only where the server refused it (a cluster's
CLUSTERDOWN or an uncovered slot, where redis-py first relearns the layout). redis-py (8.x) by
default also sends a command again,
up to three times, when its connection fails or its reply times out — also when the server had
applied it and only the reply was lost. For XREADGROUP ``>`` or XAUTOCLAIM that hands entries to
this consumer that nobody knows of, while the repeat reads the ones after them: those were
delivered after later ones (seen on a cluster failover). The worker retries itself, knowing
which commands are safe to repeat and which reply it must look for first (``worker.py``).

Every client gets a connect and a reply timeout (``timeout``, :data:`DEFAULT_TIMEOUT` unless
told): a reply that never comes (a node killed mid-command, a half-open connection after a
failover) raises :class:`redis.exceptions.TimeoutError` instead of blocking its caller for ever.
A blocking read (XREADGROUP BLOCK) must ask for less than that; Settings checks ``block_ms``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as redis_asyncio
import redis.asyncio.cluster as async_cluster
import redis.asyncio.connection as async_connection
import redis.cluster as sync_cluster
from redis import exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_TIMEOUT",
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
# Seconds to connect and to wait for any reply. Above the worker's longest blocking read
# (METRICRELAY_BLOCK_MS, 1 s by default) with room to spare.
DEFAULT_TIMEOUT: Final = 10.0


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


class _RelayConnection(async_connection.AbstractConnection):
    """What every asyncio connection of metricrelay does unlike redis-py's own, when it sends.

    It sends under ``asyncio.timeout``, not ``asyncio.wait_for``. redis-py sends through
    ``wait_for`` whenever a socket timeout is set; on Python 3.11 ``wait_for`` runs the send as a
    task of its own and, when the caller is cancelled just as that task finishes, returns its
    result instead of raising (CPython gh-86296, fixed in 3.12). The cancellation was lost and
    the caller ran on: a worker's poller cancelled at shutdown during its SCAN slept another
    minute, and ``close()`` waited for it (the observability tests' intermittent hang).

    And it replaces a connection that the server closed while it sat in the pool (a Redis
    restart, a failover) before sending on it. redis-py's pool checks that only while its
    maintenance notifications are off, and redis-py 8.1 has them on ("auto") by default: the
    first command on each such connection failed with "Connection closed by server", which
    made a readiness probe flap right after Redis was back.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        reader = self._reader
        if self.is_connected and reader is not None and reader.at_eof():
            await self.disconnect(nowait=True)  # closed by the server, nothing left unread
        timeout = self.socket_timeout
        if not timeout:
            await super().send_packed_command(command, check_health)
            return
        if not self.is_connected:
            # under its own timeouts: the socket timeout is still set (untyped in redis-py)
            await self.connect()  # type: ignore[no-untyped-call]
        elif check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        # Without a socket timeout the base class writes and drains in this task, no wait_for;
        # it closes the connection on whatever interrupts the write, the deadline included.
        self.socket_timeout = None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health=False)
        except TimeoutError:
            raise exceptions.TimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout


class _Connection(_RelayConnection, async_connection.Connection):
    pass


class _SSLConnection(_RelayConnection, async_connection.SSLConnection):
    pass


class _UnixConnection(_RelayConnection, async_connection.UnixDomainSocketConnection):
    pass


_RELAY_CLASSES: Final[dict[type[Any], type[Any]]] = {
    async_connection.Connection: _Connection,
    async_connection.SSLConnection: _SSLConnection,
    async_connection.UnixDomainSocketConnection: _UnixConnection,
}


class _RelayCluster(async_cluster.RedisCluster):
    """redis-py's cluster client, repeating a command only where the cluster refused it
    (CLUSTERDOWN during a failover, a slot not yet covered): then it was not applied, and the
    client learns the new layout first. Not after a connection error or a timeout, where the
    command may have been applied (see the module's docstring)."""

    ERRORS_ALLOW_RETRY = (exceptions.ClusterDownError, exceptions.SlotNotCoveredError)  # type: ignore[assignment]


def _relay_class(connection_class: type[Any]) -> type[Any]:
    """The class to use instead of redis-py's own (a class of the caller's is kept)."""
    return _RELAY_CLASSES.get(connection_class, connection_class)


def _with_timeouts(options: dict[str, Any], timeout: float) -> None:
    """Set both socket timeouts in ``options``, unless the caller did (None included)."""
    options.setdefault("socket_timeout", timeout)
    options.setdefault("socket_connect_timeout", timeout)


def async_client(
    url: str, *, cluster: bool = False, timeout: float = DEFAULT_TIMEOUT, **options: Any
) -> Any:
    """An asyncio client: ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.

    ``timeout`` bounds connecting and every reply; ``socket_timeout`` and
    ``socket_connect_timeout`` among ``options`` win over it.
    """
    _with_timeouts(options, timeout)
    if is_cluster(url, cluster):
        first, nodes = startup_nodes(url)
        more = [async_cluster.ClusterNode(host, port) for host, port in nodes[1:]]
        if more:
            options["startup_nodes"] = more
        cluster_client = _RelayCluster.from_url(first, **options)
        # RedisCluster takes no connection class: the nodes it has and the nodes it will learn
        # of (from the kwargs it keeps) are given ours here.
        manager = cluster_client.nodes_manager
        kwargs = manager.connection_kwargs
        kwargs["connection_class"] = _relay_class(kwargs["connection_class"])
        for node in manager.startup_nodes.values():
            node.connection_class = _relay_class(node.connection_class)
        return cluster_client
    options.setdefault("retry", Retry(NoBackoff(), 0))  # sent once: see the module's docstring
    client = redis_asyncio.Redis.from_url(url, **options)
    pool = client.connection_pool
    pool.connection_class = _relay_class(pool.connection_class)
    return client


def sync_client(
    url: str, *, cluster: bool = False, timeout: float = DEFAULT_TIMEOUT, **options: Any
) -> Any:
    """A blocking client: ``redis.Redis`` or ``redis.cluster.RedisCluster``.

    ``timeout`` bounds connecting and every reply; ``socket_timeout`` and
    ``socket_connect_timeout`` among ``options`` win over it.
    """
    _with_timeouts(options, timeout)
    if is_cluster(url, cluster):
        first, nodes = startup_nodes(url)
        node: Any = sync_cluster.ClusterNode  # untyped in redis-py
        more = [node(host, port) for host, port in nodes[1:]]
        if more:
            options["startup_nodes"] = more
        return sync_cluster.RedisCluster.from_url(first, **options)
    return redis.Redis.from_url(url, **options)
