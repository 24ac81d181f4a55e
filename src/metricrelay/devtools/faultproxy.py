"""A seeded fault-injecting RESP proxy between a Redis client and a real redis-server (tests).

The proxy reads the client's commands (RESP arrays of bulk strings; inline commands too) and the
server's replies (every RESP2 and RESP3 type) far enough to know where each one ends, so it can
fault one command of a pipeline and keep the replies of the others in order. Each command that is
not a connection-setup command gets one :class:`Decision` from one ``random.Random(seed)``, with a
fixed number of draws per command whatever the rates, so a seed replays the same faults for the
same sequence of commands:

- ``reset_before``: the connection is closed and the command never reaches Redis;
- ``reset_after``: the command runs, its reply is dropped and the connection closed;
- ``error``: a Redis error (OOM, LOADING, READONLY, TRYAGAIN, CLUSTERDOWN, MASTERDOWN) instead;
- ``oom_writes``: the OOM error, for commands Redis refuses under ``maxmemory`` + ``noeviction``;
- ``slow``: the reply waits up to ``slow_max_s``;
- ``stall``: the reply waits ``stall_s`` (beyond a client's socket timeout), then the connection
  is closed.

A fault that closes a connection ends what was queued behind it on that connection too, as a real
reset does. :meth:`FaultProxy.freeze` holds every byte in both directions for a while (a
SIGSTOPped Redis). Limits: RESP2 pub/sub (several replies to one command) is not supported, and a
RESP3 push is passed on when the next reply is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from metricrelay.devtools.resp import ProtocolError, ReplyScanner, parse_request

__all__ = [
    "DENY_OOM",
    "ERRORS",
    "SETUP_COMMANDS",
    "Decider",
    "Decision",
    "FaultConfig",
    "FaultProxy",
    "Kind",
    "denies_oom",
]

ERRORS: Final[dict[str, bytes]] = {
    "OOM": b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
    "LOADING": b"-LOADING Redis is loading the dataset in memory\r\n",
    "READONLY": b"-READONLY You can't write against a read only replica.\r\n",
    "TRYAGAIN": b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
    "CLUSTERDOWN": b"-CLUSTERDOWN The cluster is down\r\n",
    "MASTERDOWN": b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to "
    b"'no'.\r\n",
}

# A client sends these while it connects (or to check the connection): faulting them would test
# the client library's handshake rather than how the application copes, so they pass untouched
# and draw nothing from the RNG.
SETUP_COMMANDS: Final = frozenset(
    b"HELLO AUTH CLIENT SELECT PING READONLY CLUSTER COMMAND INFO".split()
)

# Commands Redis flags ``denyoom`` (refused with -OOM over maxmemory under noeviction), and
# scripts, which Redis refuses in that state unless they are declared read-only.
DENY_OOM: Final = frozenset(
    b"""APPEND BITFIELD BITOP BLMOVE BRPOPLPUSH COPY DECR DECRBY EVAL EVALSHA FCALL GEOADD
    GEOSEARCHSTORE GETSET HINCRBY HINCRBYFLOAT HMSET HSET HSETNX INCR INCRBY INCRBYFLOAT LINSERT
    LMOVE LPUSH LPUSHX LSET MSET MSETNX PFADD PFMERGE PSETEX RESTORE RPOPLPUSH RPUSH RPUSHX SADD
    SDIFFSTORE SET SETBIT SETEX SETNX SETRANGE SINTERSTORE SMOVE SORT SUNIONSTORE XADD XSETID ZADD
    ZDIFFSTORE ZINCRBY ZINTERSTORE ZRANGESTORE ZUNIONSTORE""".split()
)
_DENY_OOM_SUBCOMMANDS: Final = {b"XGROUP": frozenset({b"CREATE", b"CREATECONSUMER"})}
_TRANSACTION_END: Final = frozenset({b"EXEC", b"DISCARD"})

_CHUNK: Final = 1 << 16
_PUSH: Final = ord(">")  # a RESP3 push: not the reply to any command
log = logging.getLogger(__name__)


def denies_oom(args: Sequence[bytes]) -> bool:
    """Whether Redis would refuse this command with -OOM over ``maxmemory`` (noeviction)."""
    if not args:
        return False
    name = args[0].upper()
    if name in DENY_OOM:
        return True
    subcommands = _DENY_OOM_SUBCOMMANDS.get(name)
    return subcommands is not None and len(args) > 1 and args[1].upper() in subcommands


class Kind(enum.Enum):
    SETUP = "setup"
    PASS = "passed"
    RESET_BEFORE = "reset_before"
    RESET_AFTER = "reset_after"
    ERROR = "error"
    OOM_WRITES = "oom_writes"
    SLOW = "slow"
    STALL = "stall"

    @property
    def forwards(self) -> bool:
        return self not in (Kind.RESET_BEFORE, Kind.ERROR, Kind.OOM_WRITES)

    @property
    def closes(self) -> bool:
        return self in (Kind.RESET_BEFORE, Kind.RESET_AFTER, Kind.STALL)


_FAULT_ORDER: Final = (
    Kind.RESET_BEFORE, Kind.RESET_AFTER, Kind.ERROR, Kind.OOM_WRITES, Kind.SLOW, Kind.STALL
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """How often each fault hits a command (0 … 1, together at most 1), and its parameters."""

    reset_before: float = 0.0
    reset_after: float = 0.0
    error: float = 0.0
    oom_writes: float = 0.0
    slow: float = 0.0
    stall: float = 0.0
    errors: tuple[str, ...] = tuple(ERRORS)  # which errors ``error`` picks from
    only: tuple[str, ...] = ()  # the commands faults may hit (upper case); empty: every one
    slow_max_s: float = 0.5
    stall_s: float = 10.0

    def __post_init__(self) -> None:
        rates = [self.rate(kind) for kind in _FAULT_ORDER]
        if any(not 0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be 0 … 1 and add up to at most 1: {rates}")
        unknown = set(self.errors) - set(ERRORS)
        if not self.errors or unknown:
            raise ValueError(f"errors must name some of {', '.join(ERRORS)}: {self.errors}")
        if self.slow_max_s < 0 or self.stall_s <= 0:
            raise ValueError("slow_max_s must be >= 0 and stall_s > 0")

    def rate(self, kind: Kind) -> float:
        rate: float = getattr(self, kind.value)
        return rate


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one command: ``reply`` for the faults that answer in Redis' place,
    ``delay`` for those that hold the reply."""

    kind: Kind
    reply: bytes = b""
    delay: float = 0.0


class Decider:
    """One seeded RNG and :data:`DRAWS` draws per faultable command, whatever the rates, so a
    change of rates (``set_config``) does not shift the faults that follow."""

    DRAWS: Final = 3

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)

    def decide(self, args: Sequence[bytes], *, in_transaction: bool = False) -> Decision:
        if args and args[0].upper() in SETUP_COMMANDS:
            return Decision(Kind.SETUP)
        which, pick, share = (self._rng.random() for _ in range(self.DRAWS))
        config = self.config
        kind, bound = Kind.PASS, 0.0
        for candidate in _FAULT_ORDER:
            bound += config.rate(candidate)
            if which < bound:
                kind = candidate
                break
        if kind is Kind.OOM_WRITES and not denies_oom(args):
            kind = Kind.PASS
        if config.only and (not args or args[0].upper().decode() not in config.only):
            kind = Kind.PASS  # drawn all the same, so the faults that follow do not shift
        # Redis answers a command queued in MULTI with an error and then aborts EXEC; answering
        # in its place would let EXEC run the rest, a thing Redis never does.
        if in_transaction and kind in (Kind.ERROR, Kind.OOM_WRITES):
            kind = Kind.PASS
        if kind is Kind.ERROR:
            return Decision(kind, ERRORS[config.errors[int(pick * len(config.errors))]])
        if kind is Kind.OOM_WRITES:
            return Decision(kind, ERRORS["OOM"])
        if kind is Kind.SLOW:
            return Decision(kind, delay=share * config.slow_max_s)
        if kind is Kind.STALL:
            return Decision(kind, delay=config.stall_s)
        return Decision(kind)


@dataclass(frozen=True, slots=True)
class _Slot:
    """A command awaiting its reply, in the order the client sent it."""

    decision: Decision
    forwarded: bool


class _Connection:
    """One client connection and its own connection to Redis."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.up_reader, self.up_writer = upstream
        self.slots: asyncio.Queue[_Slot] = asyncio.Queue()
        self.in_transaction = False
        self._replies = bytearray()
        self._scanner = ReplyScanner()

    async def run(self) -> None:
        requests = asyncio.create_task(self._pump_requests())
        replies = asyncio.create_task(self._pump_replies())
        tasks = [requests, replies]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # A fault stopped the requests: the replies before it (and its own, for
            # reset_after and stall) still go their way, then the connection closes; unless
            # the client leaves first, which only reading it on (and dropping it) tells.
            if requests.done() and not requests.exception() and requests.result():
                tasks.append(asyncio.create_task(self._until_client_leaves()))
                await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):  # a bug here, not a fault of the network
                    log.error("fault proxy connection failed", exc_info=outcome)
            for writer in (self.client_writer, self.up_writer):
                writer.close()

    async def _until_client_leaves(self) -> None:
        with contextlib.suppress(ConnectionError):
            while await self.client_reader.read(_CHUNK):
                pass

    async def _pump_requests(self) -> bool:
        """Client → Redis; True when a fault ended the connection, False when the client left."""
        buf = bytearray()
        with contextlib.suppress(ConnectionError, ProtocolError):
            while chunk := await self.client_reader.read(_CHUNK):
                buf += chunk
                out = bytearray()
                pos = 0
                while (parsed := parse_request(buf, pos)) is not None:
                    args, end = parsed
                    decision = self._decide(args)
                    if decision.kind.forwards:
                        out += buf[pos:end]
                    self.slots.put_nowait(_Slot(decision, decision.kind.forwards))
                    pos = end
                    if decision.kind.closes:  # nothing after it reaches Redis
                        await self._send(self.up_writer, out)
                        return True
                del buf[:pos]
                await self._send(self.up_writer, out)
        return False

    def _decide(self, args: list[bytes]) -> Decision:
        decision = self.proxy.decide(args, in_transaction=self.in_transaction)
        name = args[0].upper() if args else b""
        if name == b"MULTI":
            self.in_transaction = True
        elif name in _TRANSACTION_END:
            self.in_transaction = False
        return decision

    async def _pump_replies(self) -> None:
        """Redis → client, one reply per command in order; returns when a fault closes."""
        with contextlib.suppress(ConnectionError, ProtocolError):
            while True:
                slot = await self.slots.get()
                decision = slot.decision
                reply = await self._next_reply() if slot.forwarded else decision.reply
                if decision.delay:
                    await asyncio.sleep(decision.delay)
                if decision.kind.closes:
                    return
                await self._send(self.client_writer, reply)

    async def _next_reply(self) -> bytes:
        """The next reply from Redis; pushes (RESP3 ``>``) are passed on as they come."""
        while True:
            end = self._scanner.scan(self._replies)
            if end is None:
                chunk = await self.up_reader.read(_CHUNK)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                self._replies += chunk
                continue
            reply = bytes(self._replies[:end])
            del self._replies[:end]
            self._scanner.reset()
            if reply[0] != _PUSH:
                return reply
            await self._send(self.client_writer, reply)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes | bytearray) -> None:
        await self.proxy.thawed()
        if data:
            writer.write(data)
            await writer.drain()


class FaultProxy:
    """The proxy on 127.0.0.1 and a free port, served by an event loop on a thread of its own.

    ``with FaultProxy("127.0.0.1", redis_port, FaultConfig(error=0.01), seed=1) as proxy:``
    then point the client at ``proxy.url``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        config: FaultConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._decider = Decider(config or FaultConfig(), seed)
        self._lock = threading.Lock()  # the decider and stats are shared with callers' threads
        self._stats: Counter[str] = Counter()
        self._by_command: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._frozen_until = 0.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def stats(self) -> Counter[str]:
        """Commands by what happened to them (``passed``, ``setup``, each fault kind), and
        ``connections`` and ``freezes``."""
        with self._lock:
            return Counter(self._stats)

    @property
    def by_command(self) -> Counter[str]:
        """Faults injected by kind and command name, e.g. ``"reset_after XADD"``: what a run's
        failures can be traced back to."""
        with self._lock:
            return Counter(self._by_command)

    def set_config(self, config: FaultConfig) -> None:
        with self._lock:
            self._decider.config = config

    def decide(self, args: Sequence[bytes], *, in_transaction: bool = False) -> Decision:
        with self._lock:
            decision = self._decider.decide(args, in_transaction=in_transaction)
            self._stats[decision.kind.value] += 1
            if decision.kind not in (Kind.PASS, Kind.SETUP):
                name = args[0].upper().decode(errors="replace") if args else ""
                self._by_command[f"{decision.kind.value} {name}"] += 1
            return decision

    def freeze(self, seconds: float) -> None:
        """Hold all traffic for ``seconds`` from now; returns at once, the freeze in force."""
        if self._thread is None:
            raise RuntimeError("the proxy is not running")
        asyncio.run_coroutine_threadsafe(self._freeze(seconds), self._loop).result(10)

    async def _freeze(self, seconds: float) -> None:
        self._frozen_until = max(self._frozen_until, self._loop.time() + seconds)
        with self._lock:
            self._stats["freezes"] += 1

    async def thawed(self) -> None:
        """Return once no freeze is in force (a freeze may be extended while waiting)."""
        while (left := self._frozen_until - self._loop.time()) > 0:
            await asyncio.sleep(left)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy")
        self._thread.daemon = True  # a test that forgets close() must not hang the interpreter
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        with self._lock:
            self._stats["connections"] += 1
        try:
            # Python 3.11's start_server logs a cancelled handler task as an error (fixed in
            # 3.12): close() cancels it, and ending normally here is what that means anyway.
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay(reader, writer)
        finally:
            self._connections.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(*self.upstream)
        except OSError:  # Redis is down: the client sees its connection refused, in effect
            writer.close()
            return
        await _Connection(self, (reader, writer), upstream).run()

    def close(self) -> None:
        """Stop listening and close every connection; the proxy cannot be started again."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the transports' close callbacks run before the loop stops

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
