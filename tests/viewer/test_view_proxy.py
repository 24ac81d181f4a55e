"""The proxy of ``metricrelay view``: read-only, holds the token, errors a person can act on."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from tests.support.reference_api import CLIENT_ID, CLIENT_SECRET
from tests.viewer.conftest import (
    FIXED_TOKEN,
    RUNS,
    StartView,
    TokenRecorder,
    oauth_env,
    token_env,
)

from metricrelay.api.server import BackgroundServer

pytestmark = pytest.mark.integration


def _call(url: str, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def oauth_view(reference: BackgroundServer, recorder: TokenRecorder, start_view: StartView) -> str:
    return start_view(oauth_env(reference, auth_url=recorder.url))


def test_lists_and_reads_through_the_proxy(oauth_view: str) -> None:
    status, body = _call(oauth_view + "/v2/lm/executions?$top=2")
    assert status == 200
    listing = orjson.loads(body)
    assert listing["count"] == len(RUNS)
    assert len(listing["resources"]) == 2
    status, body = _call(oauth_view + "/v2/lm/metrics?tagFilters=model%3Dcnn&$select=tags")
    assert status == 200
    assert sorted(r["executionId"] for r in orjson.loads(body)["resources"]) == [
        "run-b",
        "run-c",
        "run-empty",
    ]
    status, body = _call(oauth_view + "/v2/lm/executions/$count")
    assert (status, orjson.loads(body)) == (200, len(RUNS))


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "POST", "PUT"])
def test_nothing_but_get(oauth_view: str, reference: BackgroundServer, method: str) -> None:
    status, _ = _call(oauth_view + "/v2/lm/metrics?executionId=run-a", method)
    assert status == 405
    status, body = _call(oauth_view + "/v2/lm/executions?$top=100")
    assert orjson.loads(body)["count"] == len(RUNS)  # nothing was deleted


@pytest.mark.parametrize("path", ["/v2/lm/meta", "/oauth/token", "/_stats", "/v2/lm/scenarios"])
def test_no_other_route(oauth_view: str, path: str) -> None:
    assert _call(oauth_view + path)[0] == 404


def test_the_page_and_session_carry_no_secret(oauth_view: str, recorder: TokenRecorder) -> None:
    _call(oauth_view + "/v2/lm/executions")  # the proxy holds a token from now on
    tokens = recorder.tokens
    assert tokens
    for path in ("/", "/_viewer/session", "/v2/lm/executions", "/v2/lm/metrics?executionIds=run-a"):
        status, body = _call(oauth_view + path)
        assert status == 200, path
        for secret in (CLIENT_SECRET, *tokens):
            assert secret.encode() not in body, path
    session = orjson.loads(_call(oauth_view + "/_viewer/session")[1])
    assert session["resourceGroup"] == "default"
    assert CLIENT_ID in session["credential"]


def test_a_wrong_secret_is_a_401_naming_the_credential(
    reference: BackgroundServer, start_view: StartView
) -> None:
    view = start_view(oauth_env(reference, secret="wrong-secret-42"))
    status, body = _call(view + "/v2/lm/executions", **{"AI-Resource-Group": "team-a"})
    assert status == 401
    error = orjson.loads(body)["error"]
    assert CLIENT_ID in error["message"] and "METRICRELAY_CLIENT_SECRET" in error["message"]
    assert error["resourceGroup"] == "team-a"
    assert b"wrong-secret-42" not in body


def test_a_refused_fixed_token_is_a_401(reference: BackgroundServer, start_view: StartView) -> None:
    view = start_view({"METRICRELAY_API_URL": reference.base_url, "METRICRELAY_TOKEN": "nope-1"})
    status, body = _call(view + "/v2/lm/executions")
    assert status == 401
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert "METRICRELAY_TOKEN" in error["message"] and "nope-1" not in error["message"]


def test_the_fixed_token_reads(reference: BackgroundServer, start_view: StartView) -> None:
    view = start_view(token_env(reference.base_url))
    status, body = _call(view + "/v2/lm/executions")
    assert status == 200 and orjson.loads(body)["count"] == len(RUNS)
    assert FIXED_TOKEN.encode() not in _call(view + "/_viewer/session")[1]


def test_an_unreachable_api_is_a_502_saying_so(start_view: StartView) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    view = start_view(token_env(f"http://127.0.0.1:{port}/v2"))
    status, body = _call(view + "/v2/lm/executions")
    assert status == 502
    message = orjson.loads(body)["error"]["message"]
    assert f"127.0.0.1:{port}/v2 is unreachable" in message


def test_a_403_names_the_credential_and_the_group() -> None:
    """AI Core answers 403 for a resource group the credential may not read; the reference
    server never does, so the proxy's answer is checked on its own."""
    from metricrelay.settings import Settings  # noqa: PLC0415
    from metricrelay.viewer.proxy import ApiProxy, ProxyReply  # noqa: PLC0415

    settings = Settings.from_sources(
        {"api_url": "https://api.example/v2", "token": FIXED_TOKEN}, env={}
    )
    proxy = ApiProxy(settings, session=None, tokens=None)  # type: ignore[arg-type]
    upstream = orjson.dumps({"error": {"code": "403", "message": f"no access {FIXED_TOKEN}"}})
    reply = proxy._answer(ProxyReply(403, upstream), "team-b", FIXED_TOKEN)
    assert reply.status == 403
    error = orjson.loads(reply.body)["error"]
    assert "METRICRELAY_TOKEN" in error["message"] and "'team-b'" in error["message"]
    assert error["resourceGroup"] == "team-b"
    assert FIXED_TOKEN not in error["message"]  # scrubbed, even when the API echoes it
