"""An HTTP endpoint that takes AI API PATCH bodies (and MLflow's tracking calls) into the stream.

A job that already logs with SAP's SDK in in-cluster mode gets durable, retried, coalesced
delivery by pointing ``AICORE_TRACKING_ENDPOINT`` here: no code change. 204 means the body is
in Redis (XADD returned); 400 carries the contract's error body, naming every bad item. Each body
goes to the event stream of its execution's shard (``Keys.route``). A job that logs with MLflow
points ``MLFLOW_TRACKING_URI`` here instead (``producer/mlflow_routes.py``).
"""

from __future__ import annotations

import orjson
from aiohttp import web
from redis.asyncio import Redis

from metricrelay.aiapi.body import check_content_type, oversized_item, read_body
from metricrelay.aiapi.errors import ApiError, bad_request, error_middleware, payload_too_large
from metricrelay.codec import decode_entry
from metricrelay.producer.ingest_auth import token_middleware
from metricrelay.producer.ingest_state import (
    CONFIG,
    DEFAULT_MAX_BODY_BYTES,
    GROUP,
    REDIS,
    IngestConfig,
    QueueUnavailable,
    append_document,
)
from metricrelay.producer.mlflow_routes import add_mlflow_routes, mlflow_error_middleware

__all__ = ["DEFAULT_MAX_BODY_BYTES", "IngestConfig", "build_ingest_app"]


def build_ingest_app(redis: Redis, config: IngestConfig) -> web.Application:
    """``redis`` is a ``redis.asyncio`` client the caller owns."""
    # The token check comes first, so that no route, not even a refusal, answers a stranger;
    # the MLflow middleware is innermost: MLflow's paths get MLflow's error body, the rest the
    # AI API's.
    middlewares = [token_middleware(config.token), error_middleware, mlflow_error_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[REDIS] = redis
    app[CONFIG] = config
    app.router.add_route("PATCH", "/v2/lm/metrics", _patch_v2)
    app.router.add_route("PATCH", "/api/v1/metrics", _patch_tracking)
    add_mlflow_routes(app)
    return app


async def _patch_v2(request: web.Request) -> web.Response:
    group = request.headers.get("AI-Resource-Group", "")
    if not GROUP.match(group):
        raise bad_request("the AI-Resource-Group header is missing or not a valid id")
    return await _append(request, group)


async def _patch_tracking(request: web.Request) -> web.Response:
    return await _append(request, request.app[CONFIG].default_resource_group)


async def _append(request: web.Request, group: str) -> web.Response:
    config = request.app[CONFIG]
    check_content_type(request)
    raw = await read_body(request, config.max_body_bytes)
    decoded = decode_entry(raw, entry_ms=0, default_resource_group=group)
    if decoded.problems:  # all or nothing, as the API itself answers a PATCH
        messages = [p.message for p in decoded.problems]
        raise bad_request("invalid MetricResource: " + "; ".join(messages[:5]), messages)
    try:  # Python's json (which decode_entry follows) reads NaN in a field it ignores
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("the body is not JSON (NaN or Infinity in some field?)") from None
    if not isinstance(document, dict):  # pragma: no cover - decode_entry refused it already
        raise bad_request("the body must be a JSON object")
    # The worker splits a body over the API's count limits into several PATCHes, but one
    # customInfo item over the limit can never be sent: refused now, as the API would, rather
    # than dead-lettered `invalid` later.
    if (oversized := oversized_item(document)) is not None:
        raise payload_too_large(oversized)
    # decode_entry refused a body without a valid executionId (400 above), so every body that
    # gets here is routable: no shard-0 fall-back is needed.
    try:
        await append_document(request.app, document, group)
    except QueueUnavailable as exc:
        raise ApiError(503, "the metrics queue is unavailable; retry later") from exc
    return web.Response(status=204)
