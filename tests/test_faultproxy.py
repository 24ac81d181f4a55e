"""The fault proxy: RESP framing, seeded decisions, and each fault as a redis-py client sees it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tests.support.waiting import until_sync

from metricrelay.devtools.embedded import RedisServer
from metricrelay.devtools.faultproxy import (
    ERRORS,
    Decider,
    FaultConfig,
    FaultProxy,
    Kind,
    denies_oom,
)
from metricrelay.devtools.resp import ProtocolError, ReplyScanner, parse_request

# Complete replies of every RESP2/RESP3 type, nested ones and nulls included.
REPLIES = [
    b"+OK\r\n",
    b"-ERR wrong\r\n",
    b":42\r\n",
    b"$5\r\nhe\r\nl\r\n",  # a bulk string holding CRLF: read by its length, not its lines
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"_\r\n",
    b",3.25\r\n",
    b"#t\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"*2\r\n*3\r\n:1\r\n$1\r\na\r\n*-1\r\n$-1\r\n",
    b"%2\r\n+first\r\n:1\r\n+second\r\n*2\r\n~1\r\n:2\r\n%0\r\n",
    b"~3\r\n+a\r\n+b\r\n_\r\n",
    b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
    b"|1\r\n+ttl\r\n:3600\r\n*2\r\n:1\r\n:2\r\n",  # an attribute, then the reply it describes
    b"*1\r\n|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n$2\r\nhi\r\n",
]


def test_the_reply_scanner_finds_where_every_resp_type_ends() -> None:
    for reply in REPLIES:
        scanner = ReplyScanner()
        assert scanner.scan(reply + b"+NEXT\r\n") == len(reply), reply


def test_the_reply_scanner_resumes_on_partial_reads() -> None:
    for reply in REPLIES:
        scanner = ReplyScanner()
        for size in range(len(reply)):  # the same growing buffer, as reads append to it
            assert scanner.scan(reply[:size]) is None, (reply, size)
        assert scanner.scan(reply) == len(reply)


def test_the_reply_scanner_refuses_what_is_not_resp() -> None:
    with pytest.raises(ProtocolError):
        ReplyScanner().scan(b"?what\r\n")
    with pytest.raises(ProtocolError):
        ReplyScanner().scan(b"*x\r\n")


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


def test_requests_are_parsed_across_partial_reads_and_several_per_read() -> None:
    commands = [(b"SET", b"k", b"a\r\nb"), (b"XADD", b"s", b"*", b"f", b""), (b"PING",)]
    wire = b"".join(_command(*c) for c in commands)
    for split in range(len(wire) + 1):
        buf = bytearray(wire[:split])
        got: list[tuple[bytes, ...]] = []
        for part in (b"", wire[split:]):  # what the first read gave, then the rest
            buf += part
            pos = 0
            while (parsed := parse_request(buf, pos)) is not None:
                got.append(tuple(parsed[0]))
                pos = parsed[1]
            del buf[:pos]
        assert got == commands and not buf, split
    assert parse_request(b"PING\r\n") == ([b"PING"], 6)  # inline


def test_a_seed_gives_one_sequence_and_every_command_draws_the_same() -> None:
    config = FaultConfig(reset_before=0.1, reset_after=0.1, error=0.1, oom_writes=0.1, slow=0.1)
    commands = [[b"SET", b"k", b"v"], [b"GET", b"k"], [b"XADD", b"s", b"*", b"f", b"v"]] * 50
    one, two, quiet = Decider(config, 7), Decider(config, 7), Decider(FaultConfig(), 7)
    first = [one.decide(c) for c in commands]
    assert first == [two.decide(c) for c in commands]
    assert {d.kind for d in first} == set(Kind) - {Kind.SETUP, Kind.STALL}
    assert first != [Decider(config, 8).decide(c) for c in commands]
    for command in commands:  # no faults at all: still three draws per command
        assert quiet.decide(command).kind is Kind.PASS
    assert quiet._rng.random() == one._rng.random()


def test_setup_commands_pass_and_draw_nothing() -> None:
    decider = Decider(FaultConfig(reset_before=1.0), 3)
    for name in (b"HELLO", b"client", b"PING", b"INFO", b"SELECT", b"COMMAND", b"AUTH"):
        assert decider.decide([name]).kind is Kind.SETUP
    assert decider._rng.random() == Decider(FaultConfig(), 3)._rng.random()


def test_oom_is_for_the_writes_redis_refuses_over_maxmemory() -> None:
    for args in ([b"XADD"], [b"hset"], [b"HINCRBY"], [b"SET"], [b"EVAL"], [b"xgroup", b"create"]):
        assert denies_oom(args), args
    for args in ([b"GET"], [b"XACK"], [b"XREADGROUP"], [b"DEL"], [b"XGROUP", b"DESTROY"], []):
        assert not denies_oom(args), args
    decider = Decider(FaultConfig(oom_writes=1.0), 1)
    assert decider.decide([b"GET", b"k"]).kind is Kind.PASS
    assert decider.decide([b"SET", b"k", b"v"]).reply == ERRORS["OOM"]
    # inside MULTI Redis would abort EXEC: the proxy does not answer in its place there
    assert decider.decide([b"SET", b"k", b"v"], in_transaction=True).kind is Kind.PASS


def test_the_config_refuses_impossible_rates() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        FaultConfig(reset_before=0.6, error=0.6)
    with pytest.raises(ValueError, match="at most 1"):
        FaultConfig(slow=-0.1)
    with pytest.raises(ValueError, match="errors"):
        FaultConfig(errors=("NOPE",))
    with pytest.raises(ValueError, match="errors"):
        FaultConfig(errors=())


# --- through the proxy, against a real redis-server -------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


@pytest.fixture
def direct(server: RedisServer) -> redis.Redis:
    """A client of the real Redis, behind the proxy's back."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    return client


@pytest.fixture
def make_proxy(server: RedisServer) -> Iterator[Callable[..., FaultProxy]]:
    started: list[FaultProxy] = []

    def make(config: FaultConfig | None = None, seed: int = 0) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", server.port, config, seed).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


def blocked(client: redis.Redis) -> int:
    """How many clients of the real Redis wait in a blocking command."""
    return int(client.info("clients")["blocked_clients"])


def through(proxy: FaultProxy, **options: Any) -> redis.Redis:
    """A client without redis-py's own retries, so that each fault shows as it happened."""
    options.setdefault("socket_timeout", 10)
    return redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0), **options)


@pytest.mark.integration
def test_commands_and_a_pipeline_of_200_pass_in_order(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy()
    client = through(proxy)
    assert client.set("a", "1") and client.get("a") == b"1"
    pipe = client.pipeline(transaction=False)
    for number in range(50):
        pipe.set(f"k{number}", "x" * number)
        pipe.incr("counter")
        pipe.xadd("s", {"n": str(number)})
        pipe.get(f"k{number}")
    replies = pipe.execute()
    assert len(replies) == 200
    assert replies[1::4] == list(range(1, 51))
    assert replies[3::4] == [b"x" * number for number in range(50)]
    assert direct.xlen("s") == 50
    assert client.pipeline(transaction=True).set("t", 1).incr("t").execute() == [True, 2]
    assert proxy.stats["passed"] >= 205


@pytest.mark.integration
def test_a_blocking_read_waits_through_the_proxy(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    client = through(make_proxy())
    client.xgroup_create("s", "g", id="$", mkstream=True)
    got: list[Any] = []
    reader = threading.Thread(
        target=lambda: got.append(client.xreadgroup("g", "c", {"s": ">"}, count=1, block=8000))
    )
    reader.start()
    until_sync(lambda: blocked(direct) == 1)
    entry_id = direct.xadd("s", {"f": "v"})
    reader.join(10)
    assert got == [[[b"s", [(entry_id, {b"f": b"v"})]]]]


@pytest.mark.integration
def test_resp3_replies_of_every_kind_pass(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    client = through(make_proxy(), protocol=3)
    client.hset("h", mapping={"x": "1"})
    client.zadd("z", {"m": 1.5})
    assert client.hgetall("h") == {b"x": b"1"}  # map
    assert client.zscore("z", "m") == 1.5  # double
    assert client.smembers("nothing") == set()  # set
    assert client.get("nothing") is None  # null
    assert "redis_version" in client.info()  # verbatim string
    script = "redis.setresp(3); return {map={a={big_number='123456789012345678901234567890'}}}"
    assert client.eval(script, 0) == {b"a": b"123456789012345678901234567890"}  # big number
    assert client.eval("redis.setresp(3); return true", 0) is True
    client.xgroup_create("s", "g", id="0", mkstream=True)
    client.xadd("s", {"f": "v"})
    assert client.xreadgroup("g", "c", {"s": ">"}, block=100)[b"s"][0][0][1] == {b"f": b"v"}


@pytest.mark.integration
def test_resets_close_the_connection_before_or_after_the_command_ran(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy(FaultConfig(reset_before=1.0))
    client = through(proxy)
    with pytest.raises(redis.ConnectionError):
        client.set("before", "1")
    assert direct.get("before") is None  # never reached Redis
    proxy.set_config(FaultConfig(reset_after=1.0))
    with pytest.raises(redis.ConnectionError):
        client.set("after", "1")
    assert direct.get("after") == b"1"  # ran; only its answer was lost
    assert proxy.stats["reset_before"] == 1 and proxy.stats["reset_after"] == 1
    assert proxy.by_command == {"reset_before SET": 1, "reset_after SET": 1}


@pytest.mark.integration
@pytest.mark.parametrize("code", list(ERRORS))
def test_errors_answer_in_redis_place(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis, code: str
) -> None:
    client = through(make_proxy(FaultConfig(error=1.0, errors=(code,))))
    with pytest.raises(redis.RedisError) as caught:
        client.set("k", "1")
    message = ERRORS[code].decode()[len(code) + 2 : -2]  # redis-py drops the code itself
    assert message in str(caught.value)
    assert direct.get("k") is None


@pytest.mark.integration
def test_oom_writes_refuse_only_writes(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    direct.set("k", "1")
    direct.xadd("s", {"f": "v"})
    client = through(make_proxy(FaultConfig(oom_writes=1.0)))
    for write in (
        lambda: client.set("k", "2"),
        lambda: client.xadd("s", {"f": "w"}),
        lambda: client.xgroup_create("s", "g"),
        lambda: client.eval("return redis.call('SET', 'k', '3')", 0),
    ):
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            write()
    assert client.get("k") == b"1" and len(client.xrange("s")) == 1
    assert client.delete("k") == 1  # DEL frees memory: Redis allows it


@pytest.mark.integration
def test_slow_replies_arrive_late_and_in_order(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy(FaultConfig(slow=1.0, slow_max_s=0.05), seed=4)
    client = through(proxy)
    pipe = client.pipeline(transaction=False)
    for number in range(20):
        pipe.set(f"k{number}", number).get(f"k{number}")
    assert pipe.execute()[1::2] == [str(n).encode() for n in range(20)]
    assert proxy.stats["slow"] == 40


@pytest.mark.integration
def test_a_stall_outlasts_the_socket_timeout_then_closes(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy(FaultConfig(stall=1.0, stall_s=0.5))
    with pytest.raises(redis.TimeoutError):
        through(proxy, socket_timeout=0.1).set("k", "1")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        through(proxy, socket_timeout=None).set("k", "2")
    assert time.monotonic() - started >= 0.45
    assert direct.get("k") == b"2"  # it ran: only the answer was held, then lost


@pytest.mark.integration
def test_a_client_leaving_a_faulted_blocking_read_ends_it_on_redis(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy(FaultConfig(reset_after=1.0))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(_command(b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"))  # for ever
        until_sync(lambda: blocked(direct) == 1)
    # the proxy waits for that reply to drop it, but must notice the client went away
    until_sync(lambda: blocked(direct) == 0)


@pytest.mark.integration
def test_a_fault_in_a_pipeline_drops_the_rest_of_the_connection(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    config = FaultConfig(reset_before=0.02)
    commands = [[b"SET", b"k%d" % number, b"v"] for number in range(200)]
    seed, hit = next(  # a seed whose first fault lands in the middle of the pipeline
        (seed, hit)
        for seed in range(1000)
        if 20 <= (hit := _first_fault(config, seed, commands)) <= 180
    )
    client = through(make_proxy(config, seed))
    pipe = client.pipeline(transaction=False)
    for number in range(200):
        pipe.set(f"k{number}", "v")
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    assert direct.exists(*[f"k{n}" for n in range(hit)]) == hit  # the commands before it ran
    assert direct.exists(*[f"k{n}" for n in range(hit, 200)]) == 0  # none from it on


def _first_fault(config: FaultConfig, seed: int, commands: list[list[bytes]]) -> int:
    """The index of the first command a fresh decider with ``seed`` faults (-1: none)."""
    decider = Decider(config, seed)
    for index, command in enumerate(commands):
        if decider.decide(command).kind is not Kind.PASS:
            return index
    return -1


def _outcomes(proxy: FaultProxy, count: int) -> list[str]:
    client = through(proxy)  # after a reset, redis-py connects again for the next command
    seen = []
    for number in range(count):
        try:
            client.incr(f"n{number}")
            seen.append("ok")
        except redis.RedisError as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
    return seen


@pytest.mark.integration
def test_the_same_seed_injects_the_same_faults(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    config = FaultConfig(reset_before=0.1, reset_after=0.1, error=0.15, slow=0.1, slow_max_s=0.01)
    first = _outcomes(make_proxy(config, 11), 80)
    direct.flushall()
    assert _outcomes(make_proxy(config, 11), 80) == first
    direct.flushall()
    assert _outcomes(make_proxy(config, 12), 80) != first
    predicted = Decider(config, 11)
    for outcome in first:  # and it is what the decider, on its own, says for that seed
        kind = predicted.decide([b"INCR", b"n"]).kind
        if kind in (Kind.PASS, Kind.SLOW):
            assert outcome == "ok"
        elif kind is Kind.ERROR:
            assert outcome.split(":")[0].endswith("Error") and outcome != "ok"
        else:
            assert outcome.startswith("ConnectionError")


@pytest.mark.integration
def test_a_freeze_holds_a_command_then_lets_it_through(
    make_proxy: Callable[..., FaultProxy], direct: redis.Redis
) -> None:
    proxy = make_proxy()
    client = through(proxy)
    client.ping()  # connected before the freeze
    passed = proxy.stats["passed"]
    proxy.freeze(2.0)
    frozen_at = time.monotonic()
    writer = threading.Thread(target=lambda: client.set("k", "1"))
    writer.start()
    until_sync(lambda: proxy.stats["passed"] == passed + 1)  # the proxy has the command
    assert direct.get("k") is None  # held: Redis has not seen it
    assert time.monotonic() - frozen_at < 2.0  # (still within the freeze when checked)
    writer.join(10)
    assert time.monotonic() - frozen_at >= 1.95
    assert direct.get("k") == b"1"
    assert client.get("k") == b"1"
    assert proxy.stats["freezes"] == 1


@pytest.mark.integration
def test_close_ends_every_connection(server: RedisServer) -> None:
    proxy = FaultProxy("127.0.0.1", server.port).start()
    client = through(proxy)
    assert client.ping()
    proxy.close()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    proxy.close()  # twice is harmless
