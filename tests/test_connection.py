"""Redis clients: the URL's scheme picks the cluster client, several nodes may be named, and
every client connects and waits for a reply within a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis.asyncio.connection as async_connection
import redis.cluster as sync_cluster
from redis import exceptions as redis_exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from metricrelay.cli import main
from metricrelay.connection import (
    DEFAULT_TIMEOUT,
    async_client,
    is_cluster,
    node_url,
    startup_nodes,
    sync_client,
)
from metricrelay.devtools.embedded import RedisServer
from metricrelay.devtools.faultproxy import FaultConfig, FaultProxy
from metricrelay.errors import ConfigError
from metricrelay.settings import BLOCK_MARGIN_S, Settings


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


# --------------------------------------------------------------------------- timeouts (issue 14)


def timeouts(kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    return kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout")


def test_a_single_node_client_has_timeouts_by_default() -> None:
    async_redis = async_client("redis://127.0.0.1:1/0")
    assert timeouts(async_redis.connection_pool.connection_kwargs) == (DEFAULT_TIMEOUT,) * 2
    sync_redis = sync_client("redis://127.0.0.1:1/0")
    assert timeouts(sync_redis.connection_pool.connection_kwargs) == (DEFAULT_TIMEOUT,) * 2
    # ... which the connections made from the pool carry (nothing connects yet)
    made = async_redis.connection_pool.make_connection()
    assert (made.socket_timeout, made.socket_connect_timeout) == (DEFAULT_TIMEOUT,) * 2


def test_the_timeout_is_overridable_and_a_callers_own_options_win() -> None:
    client = async_client("redis://127.0.0.1:1/0", timeout=3.0)
    assert timeouts(client.connection_pool.connection_kwargs) == (3.0, 3.0)
    client = sync_client("redis://127.0.0.1:1/0", timeout=3.0, socket_timeout=7.0)
    assert timeouts(client.connection_pool.connection_kwargs) == (7.0, 3.0)
    client = async_client("redis://127.0.0.1:1/0", socket_connect_timeout=None)
    assert timeouts(client.connection_pool.connection_kwargs) == (DEFAULT_TIMEOUT, None)


def test_an_asyncio_cluster_client_has_timeouts_on_every_node() -> None:
    client = async_client("redis+cluster://127.0.0.1:1,127.0.0.1:2", timeout=4.0)
    manager = client.nodes_manager  # nothing connects before the first command
    assert timeouts(manager.connection_kwargs) == (4.0, 4.0)  # nodes it will learn of
    assert len(manager.startup_nodes) == 2
    classes = [manager.connection_kwargs["connection_class"]]
    for node in manager.startup_nodes.values():
        assert timeouts(node.connection_kwargs) == (4.0, 4.0)
        classes.append(node.connection_class)
    # sending as single-node clients do (test_the_connection_class_keeps_its_kind)
    for kind in classes:
        assert issubclass(kind, async_connection.Connection)
        assert kind is not async_connection.Connection


def test_a_blocking_cluster_client_is_built_with_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py's blocking RedisCluster asks the cluster for its slots while it is built: the
    # options it is given are what there is to see without a cluster.
    built: dict[str, Any] = {}

    def from_url(url: str, **options: Any) -> object:
        built.update(options, url=url)
        return object()

    monkeypatch.setattr(sync_cluster.RedisCluster, "from_url", from_url)
    sync_client("redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2")
    assert built["url"] == "redis://:pw@127.0.0.1:1"
    assert timeouts(built) == (DEFAULT_TIMEOUT,) * 2
    sync_client("redis+cluster://127.0.0.1:1", timeout=2.5)
    assert timeouts(built) == (2.5, 2.5)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:1/0", async_connection.Connection),
        ("rediss://127.0.0.1:1/0", async_connection.SSLConnection),
        ("unix:///tmp/nothing-here.sock", async_connection.UnixDomainSocketConnection),
    ],
)
def test_the_connection_class_keeps_its_kind(url: str, kind: type[Any]) -> None:
    """Clients send through a subclass of the class redis-py picks for the URL (see
    tests/test_cancellation.py for why): TLS stays TLS, a Unix socket stays one."""
    made = async_client(url).connection_pool.make_connection()
    assert isinstance(made, kind)
    assert type(made) is not kind


def test_settings_keep_the_redis_timeout_above_the_longest_blocking_read() -> None:
    settings = Settings.from_sources({}, env={})
    assert settings.redis.redis_timeout == DEFAULT_TIMEOUT
    assert settings.redis.redis_timeout > settings.worker.block_ms / 1000 + BLOCK_MARGIN_S
    tuned = Settings.from_sources(
        {}, env={"METRICRELAY_REDIS_TIMEOUT": "32", "METRICRELAY_BLOCK_MS": "30000"}
    )
    assert (tuned.redis.redis_timeout, tuned.worker.block_ms) == (32.0, 30000)
    with pytest.raises(ConfigError, match=r"METRICRELAY_REDIS_TIMEOUT \(10 s\) must exceed"):
        Settings.from_sources({"block_ms": 9500}, env={})
    with pytest.raises(ConfigError, match="METRICRELAY_REDIS_TIMEOUT"):
        Settings.from_sources({}, env={"METRICRELAY_REDIS_TIMEOUT": "0"})


def test_the_worker_takes_the_redis_timeout_as_a_flag(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["worker", "--redis-timeout", "1.5", "--block-ms", "1000"]) == 2
    assert "METRICRELAY_REDIS_TIMEOUT (1.5 s) must exceed" in caplog.text


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP listener on a free loopback port that accepts, reads what it is sent and never
    answers: a Redis that stopped replying (its port is yielded)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])
            for peer in accepted:
                peer.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    peer.recv(65536)

    thread = threading.Thread(target=serve, name="silent redis", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for peer in accepted:
            peer.close()
        listener.close()


async def test_an_asyncio_command_to_a_silent_server_times_out() -> None:
    with silent_server() as port:
        client = async_client(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):  # the test's own deadline: a hang fails it
                with pytest.raises(redis_exceptions.TimeoutError):
                    await client.ping()
        finally:
            await client.aclose()
        assert time.monotonic() - started < 5


def test_a_blocking_command_to_a_silent_server_times_out() -> None:
    with silent_server() as port:
        # no retries: one command, one timeout (redis-py retries a timed-out command by default)
        client = sync_client(
            f"redis://127.0.0.1:{port}/0", timeout=0.3, retry=Retry(NoBackoff(), 0)
        )
        started = time.monotonic()
        with pytest.raises(redis_exceptions.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 5
        client.close()


@pytest.mark.integration
async def test_connections_the_server_closed_are_replaced_before_use() -> None:
    """After a Redis restart, every connection idle in the pool was closed by the old server:
    the next commands connect again instead of failing once each (redis-py's pool does not
    check while its maintenance notifications are on, its default)."""
    with RedisServer() as server:
        client = async_client(server.url)
        try:
            await asyncio.gather(*(client.ping() for _ in range(3)))  # three connections
            assert len(client.connection_pool._available_connections) == 3
            await asyncio.to_thread(server.restart)
            assert await asyncio.gather(*(client.ping() for _ in range(3))) == [True] * 3
        finally:
            await client.aclose()


@pytest.mark.integration
async def test_an_asyncio_command_whose_reply_is_lost_is_not_sent_again() -> None:
    """The server applied XREADGROUP ``>`` and the connection broke before its reply: the
    caller gets the error and the read happened once. (A repeat would hand this consumer entries
    nobody knows of, as redis-py's cluster client did by default: the test below.)"""
    with RedisServer() as server:
        setup = sync_client(server.url)
        for step in range(5):
            setup.xadd("events", {"step": step})
        setup.xgroup_create("events", "group", id="0")
        lost = FaultConfig(reset_after=1.0, only=("XREADGROUP",))
        with FaultProxy("127.0.0.1", server.port, lost, seed=1) as proxy:
            client = async_client(proxy.url)
            try:
                with pytest.raises(redis_exceptions.ConnectionError):
                    await client.xreadgroup("group", "me", {"events": ">"}, count=1)
            finally:
                await client.aclose()
        assert setup.xpending("events", "group")["pending"] == 1  # one read, not four
        setup.close()


def test_an_asyncio_cluster_client_sends_each_command_once() -> None:
    """redis-py's RedisCluster repeats a command (3 times by default) after a connection error
    or timeout on its node; during a failover that repeated XREADGROUP ``>`` on the promoted
    replica after the dead master had applied it (tests/cluster/test_cluster_fault_harness.py
    found the entries it skipped delivered last). A refusal (CLUSTERDOWN) is still repeated:
    nothing was applied, and the client relearns the layout first."""
    client = async_client("redis+cluster://127.0.0.1:1")  # nothing connects yet
    repeated = set(client.ERRORS_ALLOW_RETRY)
    assert redis_exceptions.ConnectionError not in repeated  # the reply may be what was lost
    assert redis_exceptions.TimeoutError not in repeated
    assert redis_exceptions.ClusterDownError in repeated  # refused: not applied, safe again
