"""A sink that only counts: answers every HTTP/1.1 request with 204 and counts requests and body
bytes, so that a benchmark measures the worker's own CPU rather than the reference API's
(WORKLOADS.md: "the reference server (or a sink that only counts) on loopback").

It checks nothing but the framing (request line, headers, ``Content-Length``); ``GET /_stats``
answers ``{"requests": n, "bytes": n}`` (that request not counted). Run as its own process:
``python -m bench.sink [--port N]``; it prints ``listening on http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class Counts:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0


class SinkProtocol(asyncio.Protocol):
    """One keep-alive connection: requests parsed from a buffer as they complete."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        """Answer the request at the head of the buffer if it is complete; False otherwise."""
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._refuse()
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                if not value.strip().isdigit():
                    self._refuse()
                    return False
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return False
        del self.buffer[: end + 4 + length]
        if head[0].startswith("GET /_stats "):
            body = orjson.dumps({"requests": self.counts.requests, "bytes": self.counts.bytes})
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return True
        self.counts.requests += 1
        self.counts.bytes += length
        self.transport.write(NO_CONTENT)
        return True

    def _refuse(self) -> None:
        assert self.transport is not None
        self.transport.write(BAD_REQUEST)
        self.transport.close()
        self.buffer.clear()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts()
    server = await loop.create_server(lambda: SinkProtocol(counts), "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"sink listening on http://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one (default)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
