"""Settings of the reference server: where it listens, what it stores, which faults it injects."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "DEFAULT_MAX_BODY_BYTES",
    "ApiConfig",
    "FaultConfig",
    "ResetWhen",
]

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
DEFAULT_EXPIRES_IN: Final = 43199  # what XSUAA typically answers: 12 hours less a second

ResetWhen = Literal["before", "after"]


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Faults to inject, all off by default.

    Rates are independent probabilities per faultable request. ``reset_when`` says whether a
    reset drops the connection before the request is handled (nothing stored) or after it was
    stored (the answer is lost: the case that makes a client repeat a body the server kept).
    Latency is ``latency_ms``, or drawn uniformly from ``latency_ms``-``latency_max_ms`` per
    request (seeded). ``rate_limit`` is requests per second for the whole server, whoever sends
    them (a tenant's limit): a token bucket of ``rate_burst`` requests (default: one second's
    worth); beyond it, 429 with ``Retry-After: retry_after_s``.
    """

    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    reset_rate: float = 0.0
    reset_when: ResetWhen = "before"
    latency_ms: float = 0.0
    latency_max_ms: float | None = None
    rate_limit: float | None = None
    rate_burst: int | None = None
    retry_after_s: int = 1
    max_metrics_per_request: int | None = None
    reject_names: re.Pattern[str] | None = None
    seed: int | None = None
    methods: frozenset[str] = frozenset({"PATCH"})

    def __post_init__(self) -> None:
        for name in ("fail_rate", "throttle_rate", "reset_rate"):
            _check_rate(name, getattr(self, name))
        if self.latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        if self.latency_max_ms is not None and not self.latency_max_ms >= self.latency_ms:
            raise ValueError("latency_max_ms must not be below latency_ms")
        if self.rate_limit is not None and not 0.0 < self.rate_limit < float("inf"):
            raise ValueError("rate_limit must be a positive number of requests per second")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.max_metrics_per_request is not None and self.max_metrics_per_request < 0:
            raise ValueError("max_metrics_per_request must not be negative")
        if self.reset_when not in ("before", "after"):
            raise ValueError("reset_when must be 'before' or 'after'")

    @property
    def any_random(self) -> bool:
        return bool(self.fail_rate or self.throttle_rate or self.reset_rate)

    @property
    def delayed(self) -> bool:
        return bool(self.latency_ms or self.latency_max_ms)

    @property
    def burst(self) -> int:
        """The rate limit's bucket: ``rate_burst``, else one second's worth (at least 1)."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, math.ceil(self.rate_limit or 0.0))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything ``metricrelay api`` is told on its command line."""

    host: str = "127.0.0.1"
    port: int = 8080
    db: str = ":memory:"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    token_expires_in: int = DEFAULT_EXPIRES_IN
    client_id: str | None = None
    client_secret: str | None = None
    static_token: str | None = None
    tracking_resource_group: str = "default"
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if self.token_expires_in < 0:
            raise ValueError("token_expires_in must not be negative")
        if (self.client_id is None) != (self.client_secret is None):
            raise ValueError("client_id and client_secret go together")
