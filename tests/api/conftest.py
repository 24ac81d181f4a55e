"""Fixtures for the reference server: in-process instances on free loopback ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from tests.support import reference_api
from tests.support.reference_api import Api, StartApi, config_of

from metricrelay.api.server import BackgroundServer, start_server


@pytest.fixture
async def start_api() -> AsyncIterator[StartApi]:
    """``await start_api(**options)``: a server with those options, a session and a token."""
    started: list[Api] = []

    async def start(**options: Any) -> Api:
        config, app_options = config_of(dict(options))
        server = await start_server(config, **app_options)
        api = Api(server, aiohttp.ClientSession())
        started.append(api)
        reply = await api.fetch_token()
        assert reply.status == 200, reply.body
        api.token = reply.json["access_token"]
        return api

    yield start
    await asyncio.gather(*(api.close() for api in started))


@pytest.fixture
async def api(start_api: StartApi) -> Api:
    return await start_api()


@pytest.fixture
def background() -> Iterator[Callable[..., BackgroundServer]]:
    """``background(**options)``: a server in its own thread, for the synchronous SDK."""
    running: list[BackgroundServer] = []

    def start(**options: Any) -> BackgroundServer:
        config, app_options = config_of(dict(options))
        server = BackgroundServer(config, **app_options).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def assert_error() -> Callable[..., dict[str, Any]]:
    """Kept for tests/api/test_api_remote.py (being written alongside); test modules import
    ``tests.support.reference_api.assert_error`` instead."""
    return reference_api.assert_error
