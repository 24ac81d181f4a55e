"""``metricrelay ingest``: a drop-in endpoint in front of the stream, for SAP's SDK and MLflow."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from metricrelay.errors import ConfigError

__all__ = ["register", "run", "serve_ingest"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="accept AI API PATCH bodies and MLflow tracking calls over HTTP into the stream",
        description=(
            "Serves PATCH /v2/lm/metrics and PATCH /api/v1/metrics (SAP's in-cluster tracking "
            "endpoint): point AICORE_TRACKING_ENDPOINT at it. 204 once the body is in Redis. "
            "Also serves MLflow's tracking API (/api/2.0/mlflow/...): point MLFLOW_TRACKING_URI "
            "at it; a run's id is the execution id (METRICRELAY_EXECUTION_ID or "
            "AICORE_EXECUTION_ID, else a new one). With METRICRELAY_INGEST_TOKEN set, every "
            "request must carry 'Authorization: Bearer <token>' (MLflow: MLFLOW_TRACKING_TOKEN)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--resource-group", default=None, help="for /api/v1 bodies")
    parser.add_argument("--shards", type=int, default=None, help="event streams (default 1)")
    parser.add_argument(
        "--cluster", action="store_true", default=None, help="Redis is a Redis Cluster"
    )
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument(
        "--mlflow-non-finite",
        choices=("refuse", "drop"),
        default="refuse",
        help="an MLflow metric that is NaN or infinite, which the AI API cannot store: refuse "
        "the call with 400 (the client raises in the training loop) or drop the value, "
        "logged once per run and name, and keep the rest (default: refuse)",
    )
    parser.set_defaults(handler=run)


async def serve_ingest(args: argparse.Namespace, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT; logs the bound URL (``--port 0`` picks one)."""
    from aiohttp import web  # noqa: PLC0415

    from metricrelay.connection import async_client  # noqa: PLC0415
    from metricrelay.layout import events_pattern  # noqa: PLC0415
    from metricrelay.producer.ingest import IngestConfig, build_ingest_app  # noqa: PLC0415
    from metricrelay.producer.ingest_auth import warn_if_exposed  # noqa: PLC0415
    from metricrelay.settings import Settings  # noqa: PLC0415

    fields = {"redis_url": args.redis_url, "prefix": args.prefix, "shards": args.shards}
    fields |= {"resource_group": args.resource_group, "cluster": args.cluster}
    settings = Settings.from_sources({k: v for k, v in fields.items() if v is not None})
    client = async_client(
        settings.redis.redis_url,
        cluster=settings.redis.cluster,
        timeout=settings.redis.redis_timeout,
    )
    token = settings.api.ingest_token
    config = IngestConfig(
        settings.keys(),
        settings.api.resource_group,
        args.max_body_bytes,
        token=None if token is None else token.get_secret_value(),
        execution_id=settings.api.execution_id,
        drop_non_finite=args.mlflow_non_finite == "drop",
    )
    runner = web.AppRunner(build_ingest_app(client, config), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        streams = events_pattern([config.keys])
        log.info("ingest listening on http://%s:%d (stream %s)", host, port, streams)
        warn_if_exposed(args.host, config.token)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()
        await client.aclose()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve_ingest(args))
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    return 0
