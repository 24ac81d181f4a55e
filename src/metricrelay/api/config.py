"""Settings of the reference server: where it listens, what it stores, which faults it injects."""

from __future__ import annotations

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
    """

    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    reset_rate: float = 0.0
    reset_when: ResetWhen = "before"
    latency_ms: float = 0.0
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
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.max_metrics_per_request is not None and self.max_metrics_per_request < 0:
            raise ValueError("max_metrics_per_request must not be negative")
        if self.reset_when not in ("before", "after"):
            raise ValueError("reset_when must be 'before' or 'after'")

    @property
    def any_random(self) -> bool:
        return bool(self.fail_rate or self.throttle_rate or self.reset_rate)


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
