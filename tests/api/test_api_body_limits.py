"""Oversized bodies are refused from their headers or within one chunk, never read whole."""

from __future__ import annotations

import asyncio

import orjson
import pytest

pytestmark = pytest.mark.integration  # the reference server on a loopback port

LIMIT = 1000


async def exchange(api, head: str, *parts: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request (possibly incomplete) and read one answer."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.replace("\n", "\r\n").encode())
        for part in parts:
            writer.write(part)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length) if length else b""


def request_head(api, extra: str) -> str:
    return (
        "PATCH /v2/lm/metrics HTTP/1.1\n"
        f"Host: {api.url.removeprefix('http://')}\n"
        f"Authorization: Bearer {api.token}\n"
        "AI-Resource-Group: default\n"
        "Content-Type: application/json\n"
        f"{extra}\n"
    )


async def test_declared_length_above_limit_is_refused_before_the_body(start_api) -> None:
    api = await start_api(max_body_bytes=LIMIT)
    # 100 MB announced, 10 bytes sent: the answer comes without waiting for the rest
    status, headers, body = await exchange(
        api, request_head(api, "Content-Length: 100000000\n"), b'{"executio'
    )
    assert status == 413
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["code"] == "02000005"
    assert (
        "body of 100000000 bytes exceeds the limit of 1000 bytes" in error["details"][1]["message"]
    )


async def test_chunked_body_is_refused_at_the_first_chunk_past_the_limit(start_api) -> None:
    api = await start_api(max_body_bytes=LIMIT)
    chunk = b"200\r\n" + b" " * 512 + b"\r\n"
    # three chunks and no terminating zero chunk: the body never ends, the answer still comes
    status, _, body = await exchange(
        api, request_head(api, "Transfer-Encoding: chunked\n"), chunk, chunk, chunk
    )
    assert status == 413
    assert "body of more than 1000 bytes" in orjson.loads(body)["error"]["details"][1]["message"]


async def test_expect_continue_is_answered_413_before_any_body(start_api) -> None:
    api = await start_api(max_body_bytes=LIMIT)
    head = request_head(api, "Content-Length: 5000\nExpect: 100-continue\n")
    status, headers, body = await exchange(api, head)
    assert status == 413
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"]["message"] == "PayloadLimitException"
    assert (await api.stats())["responses"]["413"] == 1


async def test_expect_continue_within_the_limit_continues(start_api) -> None:
    api = await start_api(max_body_bytes=LIMIT)
    payload = orjson.dumps({"executionId": "exec-0001", "tags": [{"name": "a", "value": "b"}]})
    head = request_head(api, f"Content-Length: {len(payload)}\nExpect: 100-continue\n")
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.replace("\n", "\r\n").encode())
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
        await reader.readline()  # the blank line after 100 Continue
        writer.write(payload)
        await writer.drain()
        status, _, _ = await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()
    assert status == 204
    assert (await api.resource("exec-0001"))["tags"] == [{"name": "a", "value": "b"}]


async def test_chunked_body_within_the_limit_is_accepted(start_api) -> None:
    api = await start_api(max_body_bytes=LIMIT)

    async def pieces():
        yield b'{"executionId": "exec-0001", '
        yield b'"metrics": [{"name": "loss", "value": 1}]}'

    reply = await api.request(
        "PATCH", "/v2/lm/metrics", data=pieces(), headers={"Content-Type": "application/json"}
    )
    assert reply.status == 204
