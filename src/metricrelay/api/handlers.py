"""Route handlers: metrics (PATCH/GET/DELETE), the in-cluster PATCH, token, meta and stats."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from aiohttp import web, web_urldispatcher

from metricrelay import __version__
from metricrelay.aiapi.body import check_content_type, parse_resource, read_body
from metricrelay.aiapi.errors import bad_request, not_found, payload_too_large, render
from metricrelay.api.asyncstore import AsyncStore
from metricrelay.api.config import ApiConfig
from metricrelay.api.faults import FaultInjector
from metricrelay.api.query import parse_delete, parse_query
from metricrelay.api.stats import Stats
from metricrelay.api.tokens import OAuthError, TokenIssuer
from metricrelay.models import RESOURCE_GROUP_PATTERN, MetricResource
from metricrelay.timestamps import format_utc

__all__ = [
    "STATE",
    "ServerState",
    "delete_metrics",
    "expect_body",
    "get_meta",
    "get_metrics",
    "get_stats",
    "issue_token",
    "patch_metrics",
    "patch_tracking",
]

log = logging.getLogger(__name__)

RESOURCE_GROUP_HEADER: Final = "AI-Resource-Group"
# Bodies above this are validated on a worker thread. pydantic-core keeps the GIL while it
# validates, so this helps bodies of a few large strings (5 MB of customInfo: 97 → 121
# bodies/s, measured) and not bodies of many small items; the SQLite writes are what must
# stay off the loop (a 5 MB write on the loop stalled it 140 ms).
OFF_LOOP_PARSE_BYTES: Final = 512 * 1024
DELETED_MESSAGE: Final = "Metric Resource was successfully deleted"
_GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)
# Enough for SAP's SDK (``AICoreV2Client.meta.get()``) to parse; only metrics are served.
META: Final = {
    "runtimeIdentifier": "metricrelay-api",
    "runtimeApiVersion": __version__,
    "description": "metricrelay reference server of the AI API metrics endpoint",
    "aiApi": {
        "version": "2.42.0",
        "capabilities": {
            "multitenant": True,
            "shareable": False,
            "staticDeployments": False,
            "userDeployments": False,
            "userExecutions": False,
            "timeToLiveDeployments": False,
            "executionSchedules": False,
            "logs": {"executions": False, "deployments": False},
            "bulkUpdates": {"executions": False, "deployments": False},
        },
    },
}


@dataclass(slots=True)
class ServerState:
    """What the handlers share; ``store`` is opened when the application starts."""

    config: ApiConfig
    tokens: TokenIssuer
    faults: FaultInjector
    stats: Stats
    wall_clock: Callable[[], datetime]
    db: AsyncStore | None = None

    @property
    def store(self) -> AsyncStore:
        if self.db is None:
            raise RuntimeError("the store is not open: the application has not started")
        return self.db


STATE: Final = web.AppKey("metricrelay_api_state", ServerState)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _resource_group(request: web.Request) -> str:
    value = request.headers.get(RESOURCE_GROUP_HEADER)
    if not value:
        raise bad_request(f"Missing header {RESOURCE_GROUP_HEADER}")
    if not _GROUP.fullmatch(value):
        raise bad_request(f"{RESOURCE_GROUP_HEADER}: must be 1-253 visible ASCII characters")
    return value


def _authorized(request: web.Request) -> ServerState:
    state = request.app[STATE]
    state.tokens.check(request.headers.get("Authorization"))
    return state


async def patch_metrics(request: web.Request) -> web.Response:
    state = _authorized(request)
    return await _patch(request, state, _resource_group(request))


async def patch_tracking(request: web.Request) -> web.Response:
    """In-cluster endpoint: no token, no resource-group header (the cluster knows both)."""
    state = request.app[STATE]
    return await _patch(request, state, state.config.tracking_resource_group)


async def _patch(request: web.Request, state: ServerState, group: str) -> web.Response:
    received = format_utc(state.wall_clock())  # the server's time for points without one
    check_content_type(request)
    raw = await read_body(request, state.config.max_body_bytes)
    resource = await _parse(raw)
    state.faults.screen(resource)
    outcome = await state.store.patch(group, resource, received)
    state.stats.record_patch(outcome)
    log.debug(
        "PATCH %s/%s: %d points (%d new, %d already stored), %d tags, %d customInfo",
        group,
        resource["executionId"],
        outcome.received,
        outcome.stored,
        outcome.duplicates,
        outcome.tags,
        outcome.custom_info,
    )
    return web.Response(status=204)


async def _parse(raw: bytes) -> MetricResource:
    if len(raw) > OFF_LOOP_PARSE_BYTES:
        return await asyncio.to_thread(parse_resource, raw)
    return parse_resource(raw)


async def get_metrics(request: web.Request) -> web.Response:
    state = _authorized(request)
    group = _resource_group(request)
    body = await state.store.query(group, parse_query(request.query))
    return web.Response(body=body, content_type="application/json")


async def delete_metrics(request: web.Request) -> web.Response:
    state = _authorized(request)
    group = _resource_group(request)
    execution_id = parse_delete(request.query)
    if not await state.store.delete(group, execution_id):
        raise not_found()
    return _json({"id": execution_id, "message": DELETED_MESSAGE})


async def get_meta(request: web.Request) -> web.Response:
    _authorized(request)
    return _json(META)


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE].stats.snapshot())


async def issue_token(request: web.Request) -> web.Response:
    """``POST /oauth/token``: client credentials in the form body or as HTTP Basic.

    The answer's ``access_token`` is a signed JWT whose ``iss`` is this URL, as XSUAA's is.
    """
    state = request.app[STATE]
    try:
        form = await request.post()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    except ValueError:  # a body that claims to be a form and is not: no fields at all
        fields = {}
    try:
        grant = state.tokens.issue(
            fields,
            request.headers.get("Authorization"),
            token_url=str(request.url.with_query(None)),
        )
    except OAuthError as exc:
        response = _json(exc.body(), exc.status)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="metricrelay"'
        return response
    return _json(grant.body())


async def expect_body(request: web.Request) -> web.Response | None:
    """Answer ``Expect: 100-continue`` with 413 before the client sends an oversized body."""
    state = request.app[STATE]
    declared = request.content_length
    if declared is not None and declared > state.config.max_body_bytes:
        # middlewares do not run for an expect handler's answer: count it here
        state.stats.requests[f"{request.method} {request.path}"] += 1
        state.stats.responses["413"] += 1
        limit = state.config.max_body_bytes
        reason = f"body of {declared} bytes exceeds the limit of {limit} bytes"
        return render(payload_too_large(reason, close=True), request.path)
    await web_urldispatcher._default_expect_handler(request)
    return None
