"""GET /v2/lm/metrics: executionIds, $filter, $select, tagFilters, $top/$skip; the parsers alone."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from metricrelay.aiapi.errors import ApiError
from metricrelay.api.query import TagFilter, parse_filter, parse_select, parse_tag_filters

pytestmark = pytest.mark.integration  # the reference server on a loopback port

RUNS = {
    "exec-0001": {"stage": "dev", "team": "vision"},
    "exec-0002": {"stage": "prod", "team": "vision"},
    "exec-0003": {"stage": "prod", "team": "speech", "note": "a,b=c"},
    "exec-0004": {},
}


@pytest.fixture
async def runs(api):
    for execution_id, tags in RUNS.items():
        body = {
            "executionId": execution_id,
            "metrics": [{"name": "loss", "value": 1, "timestamp": "2026-11-23T12:00:00Z"}],
            "tags": [{"name": k, "value": v} for k, v in tags.items()],
            "customInfo": [{"name": "c", "value": "v"}],
        }
        assert (await api.patch(body)).status == 204
    return api


async def ids(api, **params: str) -> list[str]:
    reply = await api.get(**params)
    assert reply.status == 200, reply.body
    return [r["executionId"] for r in reply.json["resources"]]


@pytest.mark.parametrize(
    ("tag_filters", "expected"),
    [
        ("stage=prod", ["exec-0002", "exec-0003"]),
        ("stage!=prod", ["exec-0001", "exec-0004"]),  # also the runs without the tag
        ("note", ["exec-0003"]),
        ("stage=prod,team=vision", ["exec-0002"]),  # AND
        ("stage=prod,team!=vision,note", ["exec-0003"]),
        (f"note={quote('a,b=c', safe='')}", ["exec-0003"]),  # percent-encoded ',' and '='
        ("stage=nothing", []),
    ],
)
async def test_tag_filters(runs, tag_filters, expected) -> None:
    assert await ids(runs, tagFilters=tag_filters) == expected


async def test_tag_filters_and_execution_ids_combine(runs) -> None:
    assert await ids(runs, tagFilters="team=vision", executionIds="exec-0002,exec-0003") == [
        "exec-0002"
    ]


async def test_execution_ids_and_filter(runs) -> None:
    assert await ids(runs, executionIds="exec-0003,exec-0001") == ["exec-0001", "exec-0003"]
    assert await ids(runs, **{"$filter": "executionId eq 'exec-0002'"}) == ["exec-0002"]
    in_filter = "executionId in ('exec-0004', 'exec-0001')"
    assert await ids(runs, **{"$filter": in_filter}) == ["exec-0001", "exec-0004"]
    both = {"$filter": in_filter, "executionIds": "exec-0001,exec-0002"}
    assert await ids(runs, **both) == ["exec-0001"]  # the two are ANDed


async def test_select(runs) -> None:
    def keys(reply) -> set[str]:
        return set(reply.json["resources"][0])

    common = {"executionId", "createdAt", "modifiedAt"}
    everything = common | {"metrics", "tags", "customInfo"}
    assert keys(await runs.get(executionIds="exec-0001")) == everything
    assert keys(await runs.get(executionIds="exec-0001", **{"$select": "*"})) == everything
    assert keys(await runs.get(executionIds="exec-0001", **{"$select": "metrics"})) == common | {
        "metrics"
    }
    tags_info = await runs.get(executionIds="exec-0001", **{"$select": "tags,customInfo"})
    assert keys(tags_info) == common | {"tags", "customInfo"}


async def test_top_and_skip_page_resources_and_count_all(runs) -> None:
    every = "exec-0001,exec-0002,exec-0003,exec-0004"
    page = await runs.get(executionIds=every, **{"$top": "2", "$skip": "1"})
    assert page.json["count"] == 4
    assert [r["executionId"] for r in page.json["resources"]] == ["exec-0002", "exec-0003"]
    empty = await runs.get(executionIds=every, **{"$top": "0"})
    assert empty.json == {"count": 4, "resources": []}


async def test_every_metric_has_a_timestamp(runs) -> None:
    reply = await runs.get(tagFilters="team")
    for res in reply.json["resources"]:
        assert all(m["timestamp"] == "2026-11-23T12:00:00.000000Z" for m in res["metrics"])


def test_parse_tag_filters() -> None:
    assert parse_tag_filters("a=b,c!=d,e,f%3Dg=h%2Ci") == (
        TagFilter("a", "eq", "b"),
        TagFilter("c", "ne", "d"),
        TagFilter("e", "exists"),
        TagFilter("f=g", "eq", "h,i"),
    )


def test_parse_filter_forms() -> None:
    assert parse_filter("executionId eq 'abcd'") == ("abcd",)
    assert parse_filter("  executionId  IN ( 'abcd' ,'efgh','abcd' ) ") == ("abcd", "efgh")
    with pytest.raises(ApiError) as raised:
        parse_filter("name eq 'abcd'")
    assert raised.value.status == 501


def test_parse_select() -> None:
    assert parse_select(None) == {"metrics", "tags", "customInfo"}
    assert parse_select("tags, metrics") == {"tags", "metrics"}
    with pytest.raises(ApiError):
        parse_select("")
