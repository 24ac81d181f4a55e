"""Redis reply values as plain values: text, and stream ids in the order Redis keeps them."""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_SEQ", "as_text", "id_key"]

MAX_SEQ: Final = 2**64 - 1  # the largest sequence part of a stream id


def as_text(value: bytes | str) -> str:
    """A reply value as text, whether or not the client decodes replies.

    Bytes that are not UTF-8 (a key, a consumer name or a field another program wrote) come out
    with U+FFFD in their place instead of raising: callers only show or compare such values, and
    one odd key must not stop a worker's trim or an operator's ``status``.
    """
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def id_key(entry_id: str, *, upper: bool = False) -> tuple[int, int]:
    """A stream id ``<ms>-<seq>`` as a pair that sorts as Redis orders ids (as text,
    ``"9-0"`` would sort after ``"10-0"``). An id without a sequence, as operators and XRANGE
    bounds write it, means its millisecond's first entry (its last with ``upper``).
    ValueError for anything else."""
    # partition, not a regex: the worker takes every entry's time from its id this way
    ms, dash, seq = entry_id.partition("-")
    if not ms.isdecimal() or (dash and not seq.isdecimal()):
        raise ValueError(f"{entry_id!r} is not a stream id (milliseconds-sequence)")
    return int(ms), int(seq) if dash else (MAX_SEQ if upper else 0)
