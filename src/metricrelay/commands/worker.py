"""``metricrelay worker``: the relay daemon (``--burst``: until the stream is drained)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from metricrelay.errors import AuthError, ConfigError
from metricrelay.settings import Settings

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

# flag → settings field; each also comes from METRICRELAY_<FIELD> (CONTRACT.md §2.3)
_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("--redis-url", "redis_url", str),
    ("--redis-timeout", "redis_timeout", float),
    ("--prefix", "prefix", str),
    ("--shards", "shards", int),
    ("--only-shards", "only_shards", str),
    ("--drain-shards", "drain_shards", int),
    ("--lease-ttl", "lease_ttl", float),
    ("--api-url", "api_url", str),
    ("--auth-url", "auth_url", str),
    ("--client-id", "client_id", str),
    ("--service-key", "service_key", str),
    ("--resource-group", "resource_group", str),
    ("--consumer-name", "consumer_name", str),
    ("--linger", "linger", float),
    ("--max-body-bytes", "max_body_bytes", int),
    ("--request-timeout", "request_timeout", float),
    ("--concurrency", "concurrency", int),
    ("--retry-base", "retry_base", float),
    ("--retry-cap", "retry_cap", float),
    ("--retry-budget", "retry_budget", float),
    ("--max-deliveries", "max_deliveries", int),
    ("--memory-budget-bytes", "memory_budget_bytes", int),
    ("--drain-deadline", "drain_deadline", float),
    ("--read-count", "read_count", int),
    ("--block-ms", "block_ms", int),
    ("--retry-after-cap", "retry_after_cap", float),
    ("--trim-interval", "trim_interval", float),
    ("--tracking-endpoint", "tracking_endpoint", str),
    ("--execution-id", "execution_id", str),
    ("--health-port", "health_port", int),
    ("--health-host", "health_host", str),
    ("--ready-api-failure-seconds", "ready_api_failure_seconds", float),
    ("--stray-interval", "stray_interval", float),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run the relay daemon: stream → validated batches → PATCH",
        description="Settings come from METRICRELAY_* (and AICORE_*) variables; flags win.",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="process until the stream has no new and no pending entries, then exit 0",
    )
    parser.add_argument(
        "--cluster",
        dest="cluster",
        action="store_const",
        const=True,
        default=None,
        help="the Redis URL is a Redis Cluster node (as a redis+cluster:// URL says)",
    )
    for flag, field, kind in _FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from metricrelay.relay.auth import auth_mode  # noqa: PLC0415 - keeps --help fast
    from metricrelay.relay.service import run_worker  # noqa: PLC0415

    fields = [f for _, f, _ in _FLAGS] + ["cluster"]
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    try:
        settings = Settings.from_sources(overrides)
        auth_mode(settings.api)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    try:
        asyncio.run(run_worker(settings, burst=args.burst))
    except asyncio.CancelledError:
        return 1
    except AuthError:  # logged by the worker; a configuration problem, as for bad settings
        return 2
    return 0
