"""The run viewer's page, its vendored assets and its execution index, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from tests.support import bodies
from tests.support.reference_api import assert_error

from metricrelay.api.viewer import STATIC_DIR

pytestmark = pytest.mark.integration


async def test_page_is_served_without_a_token(api: Any) -> None:
    reply = await api.request("GET", "/", auth_headers=False)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    page = reply.body.decode()
    # everything the page loads is local: no network access at view time
    for asset in ("uPlot.iife.min.js", "uPlot.min.css", "viewer.js", "viewer.css"):
        assert f'"/_viewer/static/{asset}"' in page
    assert "http://" not in page and "https://" not in page


JS = ("text/javascript", "application/javascript")  # which one depends on the host's mime table


@pytest.mark.parametrize(
    ("asset", "content_types", "marker"),
    [
        ("uPlot.iife.min.js", JS, b"uPlot"),
        ("uPlot.min.css", ("text/css",), b".uplot"),
        ("viewer.js", JS, b"/v2/lm/metrics?executionIds="),
        ("viewer.css", ("text/css",), b"#charts"),
        ("uPlot.LICENSE", ("",), b"MIT License"),
    ],
)
async def test_static_assets(
    api: Any, asset: str, content_types: tuple[str, ...], marker: bytes
) -> None:
    reply = await api.request("GET", f"/_viewer/static/{asset}", auth_headers=False)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith(content_types)
    assert marker in reply.body
    assert reply.body == (STATIC_DIR / asset).read_bytes()


async def test_static_route_does_not_leave_its_folder(api: Any) -> None:
    reply = await api.request("GET", "/_viewer/static/../viewer.py", auth_headers=False)
    assert reply.status in (403, 404)


async def _seed(api: Any) -> None:
    tagged = bodies.resource(
        "exec-a", tags=[{"name": "model", "value": "mlp"}, {"name": "lr", "value": "0.1"}]
    )
    tagged["metrics"] = [bodies.metric(0), bodies.metric(1)]
    for body, group in ((tagged, "default"), (bodies.resource("exec-b"), "default")):
        assert (await api.patch(body, headers={"AI-Resource-Group": group})).status == 204
    other = bodies.resource("exec-c", tags=[{"name": "team", "value": "b"}])
    assert (await api.patch(other, headers={"AI-Resource-Group": "group-b"})).status == 204


async def test_executions_of_every_group_with_tags(api: Any) -> None:
    await _seed(api)
    reply = await api.request("GET", "/_viewer/api/executions")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    executions = reply.json["executions"]
    assert [(e["resourceGroup"], e["executionId"]) for e in executions] == [
        ("default", "exec-a"),
        ("default", "exec-b"),
        ("group-b", "exec-c"),
    ]
    assert executions[0]["tags"] == [
        {"name": "lr", "value": "0.1"},
        {"name": "model", "value": "mlp"},
    ]
    assert executions[1]["tags"] == []
    assert executions[2]["tags"] == [{"name": "team", "value": "b"}]
    # an index only: the points come from GET /v2/lm/metrics
    assert all(
        set(e) == {"resourceGroup", "executionId", "tags", "createdAt", "modifiedAt"}
        for e in executions
    )


async def test_executions_of_one_group(api: Any) -> None:
    await _seed(api)
    reply = await api.request("GET", "/_viewer/api/executions", params={"resourceGroup": "group-b"})
    assert reply.status == 200
    assert [e["executionId"] for e in reply.json["executions"]] == ["exec-c"]
    empty = await api.request("GET", "/_viewer/api/executions", params={"resourceGroup": "none"})
    assert empty.json == {"executions": []}


async def test_executions_take_the_same_token_as_v2(api: Any) -> None:
    reply = await api.request("GET", "/_viewer/api/executions", auth_headers=False)
    assert_error(reply, 401)
    wrong = await api.request(
        "GET", "/_viewer/api/executions", headers={"Authorization": "Bearer nope"}
    )
    assert_error(wrong, 401)


async def test_executions_refuse_a_malformed_group(api: Any) -> None:
    reply = await api.request(
        "GET", "/_viewer/api/executions", params={"resourceGroup": "bad group"}
    )
    assert_error(reply, 400)


async def test_page_can_get_a_token_only_without_client_restriction(start_api: Any) -> None:
    """The page's first move: a token for any client id, which only an open server grants."""
    form = {"grant_type": "client_credentials", "client_id": "metricrelay-viewer"}
    open_api = await start_api(client_id=None, client_secret=None)
    opened = await open_api.request("POST", "/oauth/token", data=form, auth_headers=False)
    assert opened.status == 200
    closed_api = await start_api()
    refused = await closed_api.request("POST", "/oauth/token", data=form, auth_headers=False)
    assert refused.status == 401
