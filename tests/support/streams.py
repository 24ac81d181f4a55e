"""Reading back what producers wrote: the steps of one execution in its event stream."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from metricrelay.keys import Keys

__all__ = ["stream_steps"]


def stream_steps(url: str, execution: str, group: str = "default") -> list[int]:
    """Every metric step of ``execution`` in its event stream (one shard), in stream order."""
    client = redis.Redis.from_url(url)
    try:
        entries: Any = client.xrange(Keys().route(group, execution).events)
    finally:
        client.close()
    steps: list[int] = []
    for _, fields in entries:
        fragment = orjson.loads(fields[b"resource"])
        if fragment["executionId"] == execution:
            steps += [metric["step"] for metric in fragment.get("metrics", ())]
    return steps
