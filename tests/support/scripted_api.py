"""A scripted HTTP peer for dispatcher and worker tests: each PATCH is answered by a test's
function (the ``scripted_api`` fixture of tests/worker serves one on a free loopback port)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Answer", "ScriptedApi"]

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ScriptedApi:
    """Records every PATCH; ``answer(document, headers)`` decides each response."""

    answer: Callable[[dict[str, Any], dict[str, str]], Answer] = lambda doc, headers: (204, {}, b"")
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    delay: float = 0.0  # the server's own latency per PATCH
    patches_started: int = 0
    token_lifetime: int = 3600
    tokens_issued: list[str] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_forms.append({k: str(v) for k, v in form.items()})
        if form.get("client_secret") != "s3cret-value":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.tokens_issued.append(f"tok-{len(self.tokens_issued) + 1}")
        return web.json_response(
            {"access_token": self.tokens_issued[-1], "expires_in": self.token_lifetime}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.patches_started += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        document = orjson.loads(await request.read())
        headers = dict(request.headers)
        self.requests.append((document, headers))
        status, extra, body = self.answer(document, headers)
        if status == 0:  # drop the connection without an answer
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if status < 300:
            self.accepted.append(document)
        return web.Response(status=status, headers=extra, body=body)
