"""The run viewer: its page and assets at ``/`` and ``/_viewer/static``, and its execution index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web

from metricrelay.aiapi.errors import bad_request
from metricrelay.api.handlers import STATE
from metricrelay.models import RESOURCE_GROUP_PATTERN

__all__ = ["STATIC_DIR", "add_viewer_routes"]

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_PREFIX: Final = "/_viewer/static"
EXECUTIONS_PATH: Final = "/_viewer/api/executions"
GROUP_PARAM: Final = "resourceGroup"
_GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)


async def index(request: web.Request) -> web.FileResponse:
    # no-cache: the page is tiny and a stale one after an upgrade would call routes that moved
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


async def list_executions(request: web.Request) -> web.Response:
    """``GET /_viewer/api/executions[?resourceGroup=g]``: execution ids and tags, no points.

    The AI API GET needs execution ids, so the page must learn them somewhere; this is the only
    read outside ``/v2`` and it carries no metric data. It takes the same bearer token as ``/v2``
    so that turning on client credentials hides the index as well as the metrics.
    """
    state = request.app[STATE]
    state.tokens.check(request.headers.get("Authorization"))
    group = request.query.get(GROUP_PARAM)
    if group is not None and not _GROUP.fullmatch(group):
        raise bad_request(f"{GROUP_PARAM}: must be 1-253 visible ASCII characters")
    executions = await state.store.executions(group)
    body = orjson.dumps({"executions": executions})
    return web.Response(body=body, content_type="application/json")


def add_viewer_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", index, allow_head=False)
    router.add_get(EXECUTIONS_PATH, list_executions, allow_head=False)
    router.add_static(STATIC_PREFIX, STATIC_DIR, append_version=False)
