"""bench/sink.py, the sink that only counts: HTTP/1.1 framing, keep-alive, pipelining, counts."""

from __future__ import annotations

import asyncio

import orjson
from bench.sink import Counts, SinkProtocol


async def _exchange(payload: bytes, answers: int) -> tuple[list[bytes], Counts]:
    """Send ``payload`` on one connection; read ``answers`` responses (heads and bodies)."""
    counts = Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(counts), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for index in range(0, len(payload), 7):  # in small pieces: requests split anywhere
            writer.write(payload[index : index + 7])
            await writer.drain()
        got = []
        for _ in range(answers):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            got.append(head + await reader.readexactly(length))
        writer.close()
        await writer.wait_closed()
    return got, counts


def _patch(body: bytes) -> bytes:
    return (
        b"PATCH /v2/lm/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_pipelined_requests_are_each_answered_204_and_counted() -> None:
    bodies = [b'{"executionId":"e","metrics":[]}', b"", b"x" * 5000]
    payload = b"".join(_patch(body) for body in bodies) + b"GET /_stats HTTP/1.1\r\n\r\n"
    got, counts = await _exchange(payload, 4)
    assert got[:3] == [b"HTTP/1.1 204 No Content\r\n\r\n"] * 3
    assert got[3].startswith(b"HTTP/1.1 200 OK")
    stats = orjson.loads(got[3].partition(b"\r\n\r\n")[2])
    assert stats == {"requests": 3, "bytes": sum(len(body) for body in bodies)}
    assert (counts.requests, counts.bytes) == (3, 5032)


async def test_a_malformed_length_is_refused_and_the_connection_closed() -> None:
    got, counts = await _exchange(b"PATCH / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 1)
    assert got[0].startswith(b"HTTP/1.1 400 Bad Request")
    assert counts.requests == 0
