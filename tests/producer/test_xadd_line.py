"""The Emitter's own XADD connection: ids in order, and after any failure a fresh connection,
so that no reply left unread is ever taken for a later batch's."""

from __future__ import annotations

import pytest
import redis

from metricrelay.devtools.embedded import RedisServer
from metricrelay.producer.xadd_line import XaddLine


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    plain = redis.Redis.from_url(redis_server.url)
    plain.flushdb()
    return plain


def test_ids_come_back_in_order_and_the_entries_hold_the_fragments(client: redis.Redis) -> None:
    line = XaddLine(client.connection_pool)
    ids = line.xadd([("events", b"one"), ("events", b"two"), ("other", b"three")])
    entries = client.xrange("events")
    assert ids == [entry_id for entry_id, _ in entries] + [client.xrange("other")[0][0]]
    assert [fields[b"resource"] for _, fields in entries] == [b"one", b"two"]
    line.close()


def test_a_refused_command_drops_the_connection_and_the_next_batch_gets_its_own_ids(
    client: redis.Redis,
) -> None:
    client.set("not-a-stream", "x")
    line = XaddLine(client.connection_pool)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        # the first reply fails; the second and third stay unread on that connection
        line.xadd([("not-a-stream", b"a"), ("events", b"b"), ("events", b"c")])
    ids = line.xadd([("events", b"d")])
    last_id, fields = client.xrange("events")[-1]
    assert ids == [last_id] and fields == {b"resource": b"d"}
    assert client.xlen("events") == 3  # b and c were applied: the caller's retry decides


def test_a_connection_killed_under_it_fails_one_call_and_the_next_reconnects(
    client: redis.Redis,
) -> None:
    line = XaddLine(client.connection_pool)
    line.xadd([("events", b"first")])
    client.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis.ConnectionError):
        line.xadd([("events", b"lost or not")])
    assert line.xadd([("events", b"again")]) == [client.xrange("events")[-1][0]]
    line.close()
