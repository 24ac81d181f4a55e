"""Stream fragments and dead letters for the operator tools' tests (on the default layout)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.keys import Keys

__all__ = ["KEYS", "add_dead", "fragment", "letter"]

KEYS = Keys()


def fragment(execution: str, metrics: int = 1, *, group: str | None = "default") -> bytes:
    """A stream fragment with ``metrics`` points (names m0, m1, … and steps 0, 1, …)."""
    document: dict[str, Any] = {"executionId": execution}
    if group is not None:
        document["resourceGroup"] = group
    document["metrics"] = [
        {"name": f"m{i}", "value": float(i), "step": i, "timestamp": "2026-11-23T12:00:00.000000Z"}
        for i in range(metrics)
    ]
    return orjson.dumps(document)


def letter(resource: bytes, reason: Reason, *, sources: tuple[str, ...] = ("1-0",)) -> DeadLetter:
    return DeadLetter(resource, reason, f"{reason.value} for the test", list(sources))


def add_dead(client: redis.Redis, dead: DeadLetter, entry_id: str) -> str:
    """Append a dead letter with a chosen id (its time is what --since/--until compare)."""
    return client.xadd(KEYS.dead, dead.fields(), id=entry_id).decode()  # type: ignore[union-attr]
