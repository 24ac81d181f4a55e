"""Counters of what the server did (``GET /_stats``), and a watch on event-loop stalls."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from metricrelay.api.storage import PatchOutcome

__all__ = ["DroppedResponse", "LoopWatch", "Stats", "stats_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LAG_INTERVAL_S: Final = 0.05
STALL_MS: Final = 100.0


class DroppedResponse(web.Response):
    """Stands for an answer never written: fault injection dropped the connection instead."""


class LoopWatch:
    """Sleeps a fixed interval and records how late it wakes: the loop's longest stall."""

    def __init__(self, interval: float = LAG_INTERVAL_S) -> None:
        self.interval = interval
        self.max_lag_ms = 0.0
        self.stalls = 0  # wake-ups later than STALL_MS

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag_ms = (time.perf_counter() - started - self.interval) * 1000.0
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)
            if lag_ms > STALL_MS:
                self.stalls += 1


class Stats:
    """Plain counters; the event loop is the only writer, so no locks."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.storage: Counter[str] = Counter()
        self.loop = LoopWatch()

    def record_patch(self, outcome: PatchOutcome) -> None:
        self.storage["patches"] += 1
        self.storage["points_received"] += outcome.received
        self.storage["points_stored"] += outcome.stored
        self.storage["points_duplicate"] += outcome.duplicates
        self.storage["tags_upserted"] += outcome.tags
        self.storage["custom_info_upserted"] += outcome.custom_info

    def snapshot(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "requests": dict(self.requests),
            "responses": dict(self.responses),
            "faults": dict(self.faults),
            "storage": dict(self.storage),
            "loop": {"max_lag_ms": round(self.loop.max_lag_ms, 3), "stalls": self.loop.stalls},
        }


def stats_middleware(
    stats: Stats,
) -> Middleware:
    """Count every request by route and every answer by status (a dropped one as ``reset``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        stats.requests[f"{request.method} {name}"] += 1
        response = await handler(request)
        dropped = isinstance(response, DroppedResponse)
        stats.responses["reset" if dropped else str(response.status)] += 1
        return response

    return middleware
