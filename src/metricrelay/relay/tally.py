"""The names of everything a worker counts: one enum, so no count is matched by string prefix."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from metricrelay.deadletter import Reason
from metricrelay.relay.batching import CloseReason

__all__ = ["Tally", "body_tally", "dead_tally"]


class Tally(StrEnum):
    """A worker's counters (``Worker.stats`` keys; observability.py maps each to a metric)."""

    ENTRIES_READ = "entries_read"
    ENTRIES_ACKED = "entries_acked"
    RECLAIMED = "reclaimed"
    ENTRIES_MISROUTED = "entries_misrouted"
    TRIMMED = "trimmed"
    POINTS_SENT = "points_sent"
    REQUESTS = "requests"
    RETRIES = "retries"
    SPLITS = "splits"
    SPLITS_413 = "splits_413"
    SPLITS_400 = "splits_400"
    ISOLATED_400 = "isolated_400"
    REDIS_ERRORS = "redis_errors"
    CRASHES = "crashes"
    BODIES_METRICS = "bodies_metrics"
    BODIES_TAGS = "bodies_tags"
    BODIES_CUSTOM_INFO = "bodies_custom_info"
    BODIES_CUSTOM_INFO_BYTES = "bodies_custom_info_bytes"
    BODIES_BYTES = "bodies_bytes"
    BODIES_LINGER = "bodies_linger"
    BODIES_FLUSH = "bodies_flush"
    DEAD_LETTERS_INVALID = "dead_letters_invalid"
    DEAD_LETTERS_REJECTED = "dead_letters_rejected"
    DEAD_LETTERS_TOO_LARGE = "dead_letters_too_large"
    DEAD_LETTERS_EXHAUSTED = "dead_letters_exhausted"
    DEAD_LETTERS_POISON = "dead_letters_poison"


_BODIES: Final = {reason: Tally(f"bodies_{reason.value}") for reason in CloseReason}
_DEAD: Final = {reason: Tally(f"dead_letters_{reason.value}") for reason in Reason}


def body_tally(reason: CloseReason | None) -> Tally:
    """The counter of bodies closed for ``reason``."""
    return _BODIES[reason or CloseReason.FLUSH]


def dead_tally(reason: Reason) -> Tally:
    """The counter of dead letters written for ``reason``."""
    return _DEAD[reason]
