"""``GET /v2/lm/executions`` of the reference server, as AI Core's spec and SAP's SDK read it."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from ai_api_client_sdk.models.status import Status
from ai_core_sdk.ai_core_v2_client import AICoreV2Client
from tests.support import bodies
from tests.support.reference_api import CLIENT_ID, CLIENT_SECRET, assert_error

from metricrelay.api.executions import IDLE_S

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


class Clock:
    """The server's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def _seed(api: Any, clock: Clock, count: int, group: str = "default") -> list[str]:
    """``count`` executions, one PATCH each, a minute apart: exec-00 is the oldest."""
    ids = [f"exec-{n:02d}" for n in range(count)]
    for execution_id in ids:
        reply = await api.patch(bodies.resource(execution_id), headers={"AI-Resource-Group": group})
        assert reply.status == 204, reply.body
        clock.now += timedelta(minutes=1)
    return ids


async def test_list_newest_first_with_count_and_paging(start_api: Any) -> None:
    clock = Clock()
    api = await start_api(wall_clock=clock)
    ids = await _seed(api, clock, 7)
    await _seed(api, clock, 2, group="other")  # another group's are not listed
    everything = await api.request("GET", "/v2/lm/executions")
    assert everything.status == 200
    assert everything.headers["Content-Type"].startswith("application/json")
    assert everything.json["count"] == 7
    assert [e["id"] for e in everything.json["resources"]] == ids[::-1]
    seen = []
    for skip in range(0, 7, 3):  # $top/$skip pages: 3, 3, 1, together the whole list once
        page = await api.request(
            "GET", "/v2/lm/executions", params={"$top": "3", "$skip": str(skip)}
        )
        assert page.json["count"] == 7  # the total, not the page's length
        seen += [e["id"] for e in page.json["resources"]]
    assert seen == ids[::-1]
    beyond = await api.request("GET", "/v2/lm/executions", params={"$skip": "50"})
    assert beyond.json == {"count": 7, "resources": []}
    counted = await api.request("GET", "/v2/lm/executions/$count")
    assert counted.status == 200 and counted.json == 7


async def test_an_execution_has_ai_cores_fields(start_api: Any) -> None:
    clock = Clock()
    api = await start_api(wall_clock=clock)
    await _seed(api, clock, 1)
    (item,) = (await api.request("GET", "/v2/lm/executions")).json["resources"]
    required = {"id", "configurationId", "configurationName", "scenarioId", "status"}
    assert required | {"targetStatus", "createdAt", "modifiedAt"} <= set(item)
    assert item["id"] == "exec-00"
    assert item["createdAt"] == item["startTime"] == "2026-11-23T12:00:00.000000Z"


async def test_status_follows_the_writes(start_api: Any) -> None:
    """RUNNING while PATCHes arrive, COMPLETED once idle for IDLE_S; status filters on it."""
    clock = Clock()
    api = await start_api(wall_clock=clock)
    await _seed(api, clock, 3)  # written at 12:00, 12:01, 12:02
    clock.now = START + timedelta(seconds=IDLE_S + 90)  # exec-00 and exec-01 went quiet
    listing = (await api.request("GET", "/v2/lm/executions")).json["resources"]
    assert {e["id"]: e["status"] for e in listing} == {
        "exec-00": "COMPLETED",
        "exec-01": "COMPLETED",
        "exec-02": "RUNNING",
    }
    assert "completionTime" in listing[-1] and "completionTime" not in listing[0]

    async def ids(status: str, **extra: str) -> tuple[int, list[str]]:
        params = {"status": status, **extra}
        body = (await api.request("GET", "/v2/lm/executions", params=params)).json
        return body["count"], [e["id"] for e in body["resources"]]

    assert await ids("COMPLETED") == (2, ["exec-01", "exec-00"])
    assert await ids("COMPLETED", **{"$top": "1", "$skip": "1"}) == (2, ["exec-00"])
    assert await ids("RUNNING") == (1, ["exec-02"])
    assert await ids("DEAD") == (0, [])
    counted = await api.request("GET", "/v2/lm/executions/$count", params={"status": "RUNNING"})
    assert counted.json == 1


@pytest.mark.parametrize(
    "params",
    [{"$top": "-1"}, {"$top": "10001"}, {"$skip": "x"}, {"status": "running"}],
)
async def test_bad_query_is_400(api: Any, params: dict[str, str]) -> None:
    assert_error(await api.request("GET", "/v2/lm/executions", params=params), 400)


async def test_token_and_group_are_required(api: Any) -> None:
    assert_error(await api.request("GET", "/v2/lm/executions", auth_headers=False), 401)
    no_group = {"Authorization": f"Bearer {api.token}"}
    reply = await api.request("GET", "/v2/lm/executions", auth_headers=False, headers=no_group)
    assert_error(reply, 400)


def test_sap_sdk_reads_the_list(background_executions: Any) -> None:
    """SAP's ai-core-sdk, unchanged: ``execution.query`` (top/skip, status) and ``count``."""
    server = background_executions
    client = AICoreV2Client(
        base_url=server.base_url,
        auth_url=server.auth_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        resource_group="default",
    )
    everything = client.execution.query()
    assert everything.count == 4
    assert [e.id for e in everything.resources] == ["exec-03", "exec-02", "exec-01", "exec-00"]
    assert all(e.status == Status.RUNNING for e in everything.resources)
    page = client.execution.query(top=2, skip=1)
    assert (page.count, [e.id for e in page.resources]) == (4, ["exec-02", "exec-01"])
    assert client.execution.query(status=Status.COMPLETED).count == 0
    assert client.execution.count() == 4


@pytest.fixture
def background_executions(background: Any) -> Any:
    server = background()
    token = urllib.request.urlopen(
        server.auth_url,
        data=f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}".encode(),
        timeout=10,
    )
    headers = {
        "Authorization": f"Bearer {orjson.loads(token.read())['access_token']}",
        "AI-Resource-Group": "default",
        "Content-Type": "application/merge-patch+json",
    }
    for n in range(4):
        body = orjson.dumps(bodies.resource(f"exec-{n:02d}"))
        request = urllib.request.Request(
            server.base_url + "/lm/metrics", data=body, method="PATCH", headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 204
    return server
