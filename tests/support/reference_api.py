"""A client of the reference AI API: an aiohttp session holding a token for a server started in
process (the ``start_api`` fixture of tests/api), the API's error shape, and reading back what a
server stored."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from metricrelay.api import ApiConfig, FaultConfig
from metricrelay.api.server import BackgroundServer, RunningServer

__all__ = ["Api", "Reply", "StartApi", "assert_error", "config_of", "read_back"]

CLIENT_ID = "sb-test-client"
CLIENT_SECRET = "s3cret"
ERROR_KEYS = {"code", "message", "requestId", "target", "details"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Api:
    """One running server plus an aiohttp session that holds a token for it."""

    server: RunningServer
    session: aiohttp.ClientSession
    token: str = ""
    group: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    async def fetch_token(self, **form: str) -> Reply:
        data = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
        data["client_secret"] = CLIENT_SECRET
        data.update(form)
        return await self.request("POST", "/oauth/token", data=data, auth_headers=False)

    def headers(self, token: str | None = None, group: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token if token is None else token}"}
        out["AI-Resource-Group"] = self.group if group is None else group
        return out

    async def request(
        self, method: str, path: str, *, auth_headers: bool = True, **kwargs: Any
    ) -> Reply:
        headers = dict(self.headers()) if auth_headers else {}
        headers.update(kwargs.pop("headers", {}) or {})
        async with self.session.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def patch(self, body: Any, **kwargs: Any) -> Reply:
        path = kwargs.pop("path", "/v2/lm/metrics")
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Content-Type": "application/merge-patch+json", **kwargs.pop("headers", {})}
        return await self.request("PATCH", path, data=data, headers=headers, **kwargs)

    async def get(self, **params: str) -> Reply:
        return await self.request("GET", "/v2/lm/metrics", params=params)

    async def resource(self, execution_id: str, group: str | None = None) -> dict[str, Any]:
        headers = self.headers(group=group)
        reply = await self.request(
            "GET", "/v2/lm/metrics", params={"executionIds": execution_id}, headers=headers
        )
        assert reply.status == 200, reply.body
        (resource,) = reply.json["resources"]
        return resource

    async def stats(self) -> dict[str, Any]:
        reply = await self.request("GET", "/_stats", auth_headers=False)
        return reply.json

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()


StartApi = Callable[..., Awaitable[Api]]


def config_of(options: dict[str, Any]) -> tuple[ApiConfig, dict[str, Any]]:
    """Keyword options → an ApiConfig (fault options by their FaultConfig names), app options."""
    app_options = {k: options.pop(k) for k in ("wall_clock", "monotonic") if k in options}
    fault_fields = set(FaultConfig.__dataclass_fields__)
    faults = {k: options.pop(k) for k in list(options) if k in fault_fields}
    options.setdefault("client_id", CLIENT_ID)
    options.setdefault("client_secret", CLIENT_SECRET)
    config = ApiConfig(host="127.0.0.1", port=0, faults=FaultConfig(**faults), **options)
    return config, app_options


def assert_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """The exact AI API error shape; returns the inner ``error`` object."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS
    assert all(isinstance(error[k], str) for k in ("code", "message", "requestId", "target"))
    assert error["requestId"]
    details = error["details"]
    assert isinstance(details, list) and details
    assert all(set(d) == {"code", "message"} for d in details)
    assert details[0] == {"code": error["code"], "message": error["message"]}
    if code is not None:
        assert error["code"] == code
    return error


def read_back(api: BackgroundServer, execution_id: str, group: str = "default") -> dict[str, Any]:
    """The execution's resource as the server (run with a static token) serves it on GET; an
    empty one if it stored nothing."""
    query = urllib.parse.urlencode({"executionIds": execution_id})
    request = urllib.request.Request(
        f"{api.base_url}/lm/metrics?{query}",
        headers={
            "Authorization": f"Bearer {api.config.static_token}",
            "AI-Resource-Group": group,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        resources = json.loads(reply.read())["resources"]
    return resources[0] if resources else {"metrics": [], "tags": [], "customInfo": []}
