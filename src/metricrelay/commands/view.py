"""``metricrelay view``: the run viewer against the AI API the worker sends to (SAP AI Core)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from metricrelay.errors import ConfigError
from metricrelay.settings import Settings

__all__ = ["register", "run"]

log = logging.getLogger(__name__)

# flag → settings field, as for the worker; the secret and a fixed token only from variables
_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("--api-url", "api_url", str),
    ("--auth-url", "auth_url", str),
    ("--client-id", "client_id", str),
    ("--service-key", "service_key", str),
    ("--resource-group", "resource_group", str),
    ("--request-timeout", "request_timeout", float),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "view",
        help="serve the run viewer for the AI API's executions (read-only, token kept server-side)",
        description=(
            "Lists the executions of a resource group (GET /v2/lm/executions), finds them by tag "
            "and compares up to 10 on shared charts (GET /v2/lm/metrics). Credentials are the "
            "worker's: METRICRELAY_SERVICE_KEY, METRICRELAY_*/AICORE_* variables or "
            "METRICRELAY_TOKEN; the page talks to this server only, which adds the token and "
            "forwards nothing but those two GETs."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8090, help="port; 0 picks a free one (default %(default)s)"
    )
    for flag, field, kind in _FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None)
    parser.set_defaults(handler=run)


def _ready(url: str) -> None:
    print(f"viewer: {url}", flush=True)


def run(args: argparse.Namespace) -> int:
    from metricrelay.relay.auth import auth_mode  # noqa: PLC0415 - keeps --help fast
    from metricrelay.viewer.server import serve  # noqa: PLC0415

    overrides = {f: getattr(args, f) for _, f, _ in _FLAGS if getattr(args, f) is not None}
    try:
        settings = Settings.from_sources(overrides)
        if auth_mode(settings.api) == "none":
            raise ConfigError(
                "the in-cluster tracking endpoint only takes PATCHes: unset "
                "METRICRELAY_TRACKING_ENDPOINT (AICORE_TRACKING_ENDPOINT) and set "
                "METRICRELAY_API_URL with credentials to view runs"
            )
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    try:
        asyncio.run(serve(settings, args.host, args.port, ready=_ready))
    except OSError as exc:
        print(f"metricrelay view: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
