"""The one factory of :class:`~metricrelay.settings.Settings` for a worker built in a test."""

from __future__ import annotations

import random
from typing import Any, Final

from metricrelay.settings import Settings

__all__ = ["QUICK", "worker_settings"]

# Seconds, not minutes: a short linger and blocking read, fast retries within a short budget;
# any listener on loopback only.
QUICK: Final[dict[str, Any]] = {
    "linger": 0.05,
    "block_ms": 50,
    "retry_base": 0.01,
    "retry_cap": 0.05,
    "retry_budget": 5.0,
    "request_timeout": 5.0,
    "health_host": "127.0.0.1",
}


def worker_settings(
    redis_url: str, api_url: str, *, token: str | None = "fixed-token", **overrides: Any
) -> Settings:
    """Settings of a worker on ``redis_url`` sending to ``api_url`` (the API root, or a scripted
    API's PATCH URL), with a consumer name of its own, :data:`QUICK` and ``overrides`` (setting
    names as in ``Settings.from_sources``). ``token=None``: no fixed token (say, OAuth)."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "api_url": api_url.removesuffix("/lm/metrics"),
        "consumer_name": f"test-{random.randrange(10**9)}",
        **QUICK,
    }
    if token is not None:
        values["token"] = token
    return Settings.from_sources({**values, **overrides}, env={})
