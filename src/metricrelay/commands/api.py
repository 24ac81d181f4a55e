"""``metricrelay api``: the reference AI API metrics server, for demos, tests and rehearsals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from typing import Any

from metricrelay.api.config import (
    DEFAULT_EXPIRES_IN,
    DEFAULT_MAX_BODY_BYTES,
    ApiConfig,
    FaultConfig,
)

__all__ = ["config_from_args", "register", "run"]

log = logging.getLogger(__name__)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None


def _methods(text: str) -> frozenset[str]:
    return frozenset(part.strip().upper() for part in text.split(",") if part.strip())


def _milliseconds(text: str) -> float:
    value = float(text)
    if not value >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a duration in milliseconds")
    return value


def _latency(text: str) -> tuple[float, float | None]:
    """``MS`` (fixed) or ``MIN-MAX`` (uniform per request)."""
    low, dash, high = text.partition("-")
    if not dash:
        return _milliseconds(text), None
    bounds = _milliseconds(low), _milliseconds(high)
    if bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError(f"{text}: the maximum is below the minimum")
    return bounds


def _per_second(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive number per second")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


Flag = tuple[str, dict[str, Any]]

_SERVING: tuple[Flag, ...] = (
    (
        "--host",
        {
            "metavar": "ADDR",
            "default": "127.0.0.1",
            "help": "address to bind (default %(default)s)",
        },
    ),
    (
        "--port",
        {
            "type": _non_negative,
            "default": 8080,
            "help": "port; 0 picks a free one (default %(default)s)",
        },
    ),
    (
        "--db",
        {
            "metavar": "PATH",
            "default": ":memory:",
            "help": "SQLite file, or :memory: to keep nothing (default %(default)s)",
        },
    ),
    (
        "--max-body-bytes",
        {
            "metavar": "N",
            "type": _non_negative,
            "default": DEFAULT_MAX_BODY_BYTES,
            "help": "413 for larger request bodies (default %(default)s)",
        },
    ),
    (
        "--tracking-resource-group",
        {
            "metavar": "GROUP",
            "default": "default",
            "help": "resource group of PATCH /api/v1/metrics (default %(default)s)",
        },
    ),
)
_TOKENS: tuple[Flag, ...] = (
    (
        "--client-id",
        {"metavar": "ID", "help": "only this client gets tokens (with --client-secret)"},
    ),
    ("--client-secret", {"metavar": "SECRET", "help": "the secret of --client-id"}),
    (
        "--expires-in",
        {
            "metavar": "SECONDS",
            "type": _non_negative,
            "default": DEFAULT_EXPIRES_IN,
            "help": "token lifetime (default %(default)s)",
        },
    ),
    ("--token", {"help": "also accept this fixed bearer token (it never expires)"}),
)
_FAULTS: tuple[Flag, ...] = (
    ("--fail-rate", {"metavar": "P", "type": _rate, "default": 0.0, "help": "share answered 503"}),
    (
        "--throttle-rate",
        {"metavar": "P", "type": _rate, "default": 0.0, "help": "share answered 429"},
    ),
    (
        "--retry-after",
        {
            "metavar": "SECONDS",
            "type": _non_negative,
            "default": 1,
            "help": "Retry-After of a 429, injected or over the rate limit (default %(default)s)",
        },
    ),
    (
        "--reset-rate",
        {
            "metavar": "P",
            "type": _rate,
            "default": 0.0,
            "help": "share whose connection is dropped unanswered",
        },
    ),
    (
        "--reset-when",
        {
            "choices": ("before", "after"),
            "default": "before",
            "help": "drop before handling (nothing stored) or after storing (answer lost)",
        },
    ),
    (
        "--latency-ms",
        {
            "metavar": "MS|MIN-MAX",
            "type": _latency,
            "default": (0.0, None),
            "help": "delay added to each faultable request; MIN-MAX: drawn uniformly for each "
            "(seeded) (default 0)",
        },
    ),
    (
        "--rate-limit",
        {
            "metavar": "N",
            "type": _per_second,
            "help": "requests per second for all clients together (a tenant's limit); beyond "
            "it 429 with Retry-After (default: none)",
        },
    ),
    (
        "--rate-burst",
        {
            "metavar": "N",
            "type": _positive,
            "help": "requests the rate limit lets through at once (default: one second's worth)",
        },
    ),
    (
        "--seed",
        {
            "metavar": "N",
            "type": int,
            "help": "seed of the random faults and latencies (default: a random one, logged)",
        },
    ),
    (
        "--fault-methods",
        {
            "metavar": "METHODS",
            "type": _methods,
            "default": frozenset({"PATCH"}),
            "help": "comma-joined methods the faults above hit (default PATCH)",
        },
    ),
    (
        "--max-metrics-per-request",
        {"metavar": "N", "type": _non_negative, "help": "413 for bodies with more metrics"},
    ),
    (
        "--reject-names",
        {
            "metavar": "REGEX",
            "type": _regex,
            "help": "400 for bodies with a metric whose name matches",
        },
    ),
)
_GROUPS: tuple[tuple[str, str | None, tuple[Flag, ...]], ...] = (
    ("serving", None, _SERVING),
    ("tokens", "POST /oauth/token; every /v2 call needs a live bearer token", _TOKENS),
    ("fault injection", "off by default; faults hit /v2/lm/metrics and /api/v1/metrics", _FAULTS),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "api",
        help="run the reference AI API metrics server (SQLite storage, fault injection)",
        description=(
            "Serves PATCH|GET|DELETE /v2/lm/metrics, POST /oauth/token, GET /v2/lm/meta, the "
            "in-cluster PATCH /api/v1/metrics and GET /_stats, enforcing the rules of the AI API "
            "metrics contract, so that SAP's ai-core-sdk and the metricrelay worker work against "
            "it unchanged."
        ),
    )
    for title, description, flags in _GROUPS:
        group = parser.add_argument_group(title, description)
        for flag, options in flags:
            group.add_argument(flag, **options)
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> ApiConfig:
    faults = FaultConfig(
        fail_rate=args.fail_rate,
        throttle_rate=args.throttle_rate,
        reset_rate=args.reset_rate,
        reset_when=args.reset_when,
        latency_ms=args.latency_ms[0],
        latency_max_ms=args.latency_ms[1],
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        retry_after_s=args.retry_after,
        max_metrics_per_request=args.max_metrics_per_request,
        reject_names=args.reject_names,
        seed=args.seed,
        methods=args.fault_methods,
    )
    return ApiConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        max_body_bytes=args.max_body_bytes,
        token_expires_in=args.expires_in,
        client_id=args.client_id,
        client_secret=args.client_secret,
        static_token=args.token,
        tracking_resource_group=args.tracking_resource_group,
        faults=faults,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:  # flags that are fine alone but not together
        print(f"metricrelay api: {exc}", file=sys.stderr)
        return 2
    # imported here: aiohttp costs ~150 ms, which `metricrelay --help` should not pay
    from metricrelay.api.server import serve  # noqa: PLC0415

    try:
        asyncio.run(serve(config))
    except OSError as exc:  # the address is taken or not ours to bind
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0
