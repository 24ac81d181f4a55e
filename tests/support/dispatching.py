"""What the dispatcher tests deliver and with which token: a coalesced body of made-up items and a
token provider that records what the API refused."""

from __future__ import annotations

import orjson

from metricrelay.codec import EncodedFragment
from metricrelay.relay.batching import Body, Coalescer, Limits

__all__ = ["FakeTokens", "body_of"]


class FakeTokens:
    def __init__(self) -> None:
        self.token = "token-1"
        self.invalidated: list[dict[str, str]] = []

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def invalidate(self, rejected: dict[str, str]) -> None:
        self.invalidated.append(rejected)
        self.token = "token-2"


def body_of(metrics: int, tags: int = 0, execution: str = "exec-1") -> Body:
    coalescer = Coalescer(Limits(max_metrics=5000))
    fragment = EncodedFragment(
        "team-a",
        execution,
        [orjson.dumps({"name": f"m{i}", "value": float(i)}) for i in range(metrics)],
        [(f"t{i}", orjson.dumps({"name": f"t{i}", "value": "v"})) for i in range(tags)],
    )
    coalescer.add("1-0", fragment, now=0.0)
    [body] = coalescer.flush()
    return body
