"""The scripted HTTP peer of the dispatcher and worker tests, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tests.support.scripted_api import ScriptedApi


@pytest.fixture
async def scripted_api() -> AsyncIterator[ScriptedApi]:
    api = ScriptedApi()
    app = web.Application()
    app.router.add_route("PATCH", "/v2/lm/metrics", api.handle)
    app.router.add_route("POST", "/oauth/token", api.token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api.url = str(server.make_url("/v2/lm/metrics"))
    yield api
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
