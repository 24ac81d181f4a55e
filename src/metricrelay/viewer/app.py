"""The aiohttp application of ``metricrelay view``: the page, its assets, the read-only proxy.

Routes: ``/`` (the comparison page), ``/_viewer/static/*`` (the assets the reference server's
viewer uses too), ``/_viewer/session`` (what the page shows about the connection: API, resource
group, credential — never a secret), and GET ``/v2/lm/executions[/$count]`` and
``/v2/lm/metrics``, forwarded with the token. Nothing else, and no other method: the viewer
cannot change what the API stores.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import orjson
from aiohttp import web

from metricrelay.models import RESOURCE_GROUP_PATTERN
from metricrelay.relay.auth import build_token_provider
from metricrelay.settings import Settings
from metricrelay.viewer.proxy import ApiProxy

__all__ = ["MAX_COMPARE", "PAGE", "STATIC_DIR", "build_app"]

# The page's files are shared with the reference server's viewer: files, not code, so the
# viewer reads them without importing the reference server (ARCHITECTURE.md).
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "api" / "static"
PAGE: Final = STATIC_DIR / "runs.html"
STATIC_PREFIX: Final = "/_viewer/static"
MAX_COMPARE: Final = 10  # runs on one chart; also the AI API's limit of ids per metrics GET
GROUP_HEADER: Final = "AI-Resource-Group"
_GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)
# same-origin only, no inline script, nothing from the network: the page needs no more
_CSP: Final = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; frame-ancestors 'none'"
)

PROXY: Final = web.AppKey("metricrelay_view_proxy", ApiProxy)
SETTINGS: Final = web.AppKey("metricrelay_view_settings", Settings)


async def page(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(PAGE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = _CSP
    return response


async def session_info(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    body = {
        "api": proxy.api_url,
        "resourceGroup": proxy.default_group,
        "credential": proxy.credential,
        "maxCompare": MAX_COMPARE,
    }
    return web.json_response(body, dumps=lambda data: orjson.dumps(data).decode())


async def forward(request: web.Request) -> web.Response:
    """A proxied GET; the group is the page's ``AI-Resource-Group`` or the configured one."""
    proxy = request.app[PROXY]
    group = request.headers.get(GROUP_HEADER) or proxy.default_group
    if not _GROUP.fullmatch(group):
        reply = proxy.error(400, "bad_resource_group", f"{group!r} is not a resource group", group)
    else:
        path = request.path.removeprefix("/v2")
        reply = await proxy.get(path, request.query, group)
    response = web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[PROXY] = ApiProxy(settings, session, build_token_provider(settings, session))
        yield


def build_app(settings: Settings) -> web.Application:
    """The application; :func:`metricrelay.relay.auth.auth_mode` must accept ``settings``."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_lifecycle)
    router = app.router
    router.add_get("/", page, allow_head=False)
    router.add_get("/_viewer/session", session_info, allow_head=False)
    router.add_get(r"/v2/lm/executions{count:(/\$count)?}", forward, allow_head=False)
    router.add_get("/v2/lm/metrics", forward, allow_head=False)
    router.add_static(STATIC_PREFIX, STATIC_DIR, append_version=False)
    return app
