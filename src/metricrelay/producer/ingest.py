"""An HTTP endpoint that takes AI API PATCH bodies and appends them to the event stream.

A job that already logs with SAP's SDK in in-cluster mode gets durable, retried, coalesced
delivery by pointing ``AICORE_TRACKING_ENDPOINT`` here: no code change. 204 means the body is
in Redis (XADD returned); 400 carries the contract's error body, naming every bad item. Each body
goes to the event stream of its execution's shard (``Keys.route``).
"""

from __future__ import annotations

import logging
import re
from typing import Final

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from metricrelay.aiapi.body import check_content_type, read_body
from metricrelay.aiapi.errors import ApiError, bad_request, error_middleware
from metricrelay.codec import decode_entry
from metricrelay.connection import REDIS_UNAVAILABLE
from metricrelay.keys import Keys
from metricrelay.models import RESOURCE_GROUP_PATTERN

__all__ = ["IngestConfig", "build_ingest_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)


class IngestConfig:
    def __init__(
        self,
        keys: Keys,
        default_resource_group: str = "default",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.keys = keys
        self.default_resource_group = default_resource_group
        self.max_body_bytes = max_body_bytes


_REDIS: Final = web.AppKey("redis", Redis)
_CONFIG: Final = web.AppKey("config", IngestConfig)


def build_ingest_app(redis: Redis, config: IngestConfig) -> web.Application:
    """``redis`` is a ``redis.asyncio`` client the caller owns."""
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[_REDIS] = redis
    app[_CONFIG] = config
    app.router.add_route("PATCH", "/v2/lm/metrics", _patch_v2)
    app.router.add_route("PATCH", "/api/v1/metrics", _patch_tracking)
    return app


async def _patch_v2(request: web.Request) -> web.Response:
    group = request.headers.get("AI-Resource-Group", "")
    if not _GROUP.match(group):
        raise bad_request("the AI-Resource-Group header is missing or not a valid id")
    return await _append(request, group)


async def _patch_tracking(request: web.Request) -> web.Response:
    return await _append(request, request.app[_CONFIG].default_resource_group)


async def _append(request: web.Request, group: str) -> web.Response:
    config = request.app[_CONFIG]
    check_content_type(request)
    raw = await read_body(request, config.max_body_bytes)
    decoded = decode_entry(raw, entry_ms=0, default_resource_group=group)
    if decoded.problems:  # all or nothing, as the API itself answers a PATCH
        messages = [p.message for p in decoded.problems]
        raise bad_request("invalid MetricResource: " + "; ".join(messages[:5]), messages)
    document = orjson.loads(raw)
    if not isinstance(document, dict):  # pragma: no cover - decode_entry refused it already
        raise bad_request("the body must be a JSON object")
    document["resourceGroup"] = group
    # decode_entry refused a body without a valid executionId (400 above), so every body that
    # gets here is routable: no shard-0 fall-back is needed.
    assert decoded.fragment is not None
    stream = config.keys.route(group, decoded.fragment.execution_id).events
    try:
        await request.app[_REDIS].xadd(stream, {"resource": orjson.dumps(document)})
    except (RedisError, *REDIS_UNAVAILABLE) as exc:
        log.error("could not append to the stream: %s", exc)
        raise ApiError(503, "the metrics queue is unavailable; retry later") from exc
    return web.Response(status=204)
