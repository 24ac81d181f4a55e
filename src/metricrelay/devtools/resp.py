"""Just enough RESP (Redis' protocol) to tell where a request or a reply ends: for the fault
proxy (faultproxy.py), which must fault one command of a pipeline and keep the others' replies in
order. Requests: arrays of bulk strings, or inline commands. Replies: every RESP2 and RESP3 type,
nested aggregates and attributes included.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ProtocolError", "ReplyScanner", "parse_request"]

_CRLF: Final = b"\r\n"
_LINE_TYPES: Final = frozenset(b"+-:_,#(")  # one line: simple string, error, numbers, null…
_BLOB_TYPES: Final = frozenset(b"$!=")  # a length line, then that many bytes and CRLF
_CHILDREN: Final = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}
_ATTRIBUTE: Final = ord("|")


class ProtocolError(Exception):
    """Bytes that are not RESP: the connection is closed."""


def _number(buf: bytes | bytearray, start: int, end: int) -> int:
    try:
        return int(buf[start:end])
    except ValueError:  # also RESP3's streamed '?' lengths, which Redis never sends
        raise ProtocolError(f"bad length {bytes(buf[start:end])!r}") from None


def parse_request(buf: bytes | bytearray, pos: int = 0) -> tuple[list[bytes], int] | None:
    """One command from ``buf`` at ``pos``: its arguments and where it ends; None if incomplete."""
    line_end = buf.find(_CRLF, pos)
    if line_end < 0:
        return None
    if buf[pos] != ord("*"):  # an inline command, as telnet and redis-cli's first PING send
        return bytes(buf[pos:line_end]).split(), line_end + 2
    count = _number(buf, pos + 1, line_end)
    pos = line_end + 2
    args: list[bytes] = []
    for _ in range(max(count, 0)):
        line_end = buf.find(_CRLF, pos)
        if line_end < 0:
            return None
        if buf[pos] != ord("$"):
            raise ProtocolError(f"a command argument must be a bulk string, not {buf[pos]!r}")
        size = _number(buf, pos + 1, line_end)
        end = line_end + 2 + size
        if end + 2 > len(buf):
            return None
        args.append(bytes(buf[line_end + 2 : end]))
        pos = end + 2
    return args, pos


class ReplyScanner:
    """Finds where one reply ends in a growing buffer, resuming where it stopped last time, so a
    large reply arriving in many reads is scanned once."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._pos = 0
        self._remaining = 1  # elements still to be read, nested ones included

    def scan(self, buf: bytes | bytearray) -> int | None:
        """The end offset of the reply that starts at ``buf[0]``; None until it is complete."""
        pos, remaining = self._pos, self._remaining
        while remaining:
            line_end = buf.find(_CRLF, pos)
            if line_end < 0:
                break
            kind = buf[pos]
            if kind in _LINE_TYPES:
                pos, remaining = line_end + 2, remaining - 1
                continue
            length = _number(buf, pos + 1, line_end)
            if kind in _BLOB_TYPES:
                end = line_end + 2 + (length + 2 if length >= 0 else 0)
                if end > len(buf):
                    break
                pos, remaining = end, remaining - 1
            elif kind in _CHILDREN:
                # an attribute map is followed by the reply it describes: one element more
                extra = 1 if kind == _ATTRIBUTE else 0
                pos = line_end + 2
                remaining += max(length, 0) * _CHILDREN[kind] + extra - 1
            else:
                raise ProtocolError(f"unknown RESP type {bytes([kind])!r}")
        self._pos, self._remaining = pos, remaining
        return None if remaining else pos
