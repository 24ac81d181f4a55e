"""Injected faults: 503s, 429s, latency, dropped connections, a request-rate limit, and rules a
real API lacks.

The random faults draw from one seeded RNG, three draws per faultable request whatever the
rates, so a seed replays the same sequence of outcomes for the same sequence of requests. A
latency range draws from a second RNG of the same seed, so it leaves that sequence as it is. The
rate limit is a token bucket on the server's monotonic clock (injectable), shared by all clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from metricrelay.aiapi.errors import ApiError, bad_request, payload_too_large
from metricrelay.api.config import FaultConfig
from metricrelay.api.stats import DroppedResponse, Stats
from metricrelay.models import MetricResource

__all__ = ["Decision", "FaultInjector", "TokenBucket", "drop_connection", "fault_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths whose requests the random faults may hit: the metrics routes, never token or stats.
FAULTABLE_PATHS: Final = frozenset({"/v2/lm/metrics", "/api/v1/metrics"})
# A linger of zero makes close() send RST: the client sees "connection reset", no answer.
_RST_LINGER: Final = struct.pack("ii", 1, 0)


class Decision(enum.Enum):
    PASS = "pass"
    RESET = "reset"
    FAIL = "fail"
    THROTTLE = "throttle"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a request takes one or is refused."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.monotonic = monotonic
        self.tokens = float(burst)
        self._at = monotonic()

    def take(self) -> bool:
        now = self.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class FaultInjector:
    """Decides the fate of each faultable request and screens bodies against the fault rules."""

    def __init__(
        self,
        config: FaultConfig,
        stats: Stats,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = stats
        self._rng = random.Random(stats.seed)
        self._latency_rng = random.Random(f"latency-{stats.seed}")
        self.bucket = (
            None
            if config.rate_limit is None
            else TokenBucket(config.rate_limit, config.burst, monotonic)
        )

    def latency(self) -> float:
        """Seconds to delay this request: fixed, or drawn from the configured range."""
        low, high = self.config.latency_ms, self.config.latency_max_ms
        return (low if high is None else self._latency_rng.uniform(low, high)) / 1000.0

    def over_rate(self) -> bool:
        """Beyond the rate limit (the request takes a token otherwise)."""
        return self.bucket is not None and not self.bucket.take()

    def draw(self) -> Decision:
        reset, fail, throttle = (self._rng.random() for _ in range(3))
        if reset < self.config.reset_rate:
            return Decision.RESET
        if fail < self.config.fail_rate:
            return Decision.FAIL
        if throttle < self.config.throttle_rate:
            return Decision.THROTTLE
        return Decision.PASS

    def screen(self, resource: MetricResource) -> None:
        """``--max-metrics-per-request`` (413) and ``--reject-names`` (400) on a valid body."""
        metrics = resource.get("metrics", [])
        cap = self.config.max_metrics_per_request
        if cap is not None and len(metrics) > cap:
            self.stats.faults["too_many_metrics"] += 1
            raise payload_too_large(
                f"metrics: {len(metrics)} items, at most {cap} per request "
                "(--max-metrics-per-request)"
            )
        pattern = self.config.reject_names
        if pattern is None:
            return
        rejected = [
            f"metrics[{i}].name: {m['name']!r} is rejected (--reject-names {pattern.pattern!r})"
            for i, m in enumerate(metrics)
            if pattern.search(m["name"])
        ]
        if rejected:
            self.stats.faults["rejected_name"] += 1
            raise bad_request(f"Invalid MetricResource: {rejected[0]}", details=rejected)


def drop_connection(request: web.Request) -> None:
    """Close the connection with a reset and without an answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: a plain close is as good
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    transport.abort()


def fault_middleware(
    injector: FaultInjector,
) -> Middleware:
    """Latency, then the rate limit, then one random outcome, for the configured methods on the
    metrics paths. A request the rate limit refuses still makes its three draws."""
    config = injector.config
    stats = injector.stats

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in FAULTABLE_PATHS or request.method not in config.methods:
            return await handler(request)
        if config.delayed:
            stats.faults["delayed"] += 1
            await asyncio.sleep(injector.latency())
        decision = injector.draw()
        if injector.over_rate():
            stats.faults["rate_limited"] += 1
            raise ApiError(
                429,
                f"Too Many Requests (beyond --rate-limit {config.rate_limit:g} per second)",
                headers={"Retry-After": str(config.retry_after_s)},
            )
        if decision is not Decision.PASS:
            stats.faults[decision.value] += 1
            log.debug("injecting %s on %s %s", decision.value, request.method, request.path)
        if decision is Decision.FAIL:
            raise ApiError(503, "Service Unavailable (injected by --fail-rate)")
        if decision is Decision.THROTTLE:
            raise ApiError(
                429,
                "Too Many Requests (injected by --throttle-rate)",
                headers={"Retry-After": str(config.retry_after_s)},
            )
        if decision is Decision.PASS:
            return await handler(request)
        if config.reset_when == "after":  # the request takes effect, its answer is lost
            with contextlib.suppress(ApiError):
                await handler(request)
        drop_connection(request)
        return DroppedResponse()

    return middleware
