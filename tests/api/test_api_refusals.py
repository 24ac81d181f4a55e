"""Every 4xx the server gives, each in the exact error-body shape (token endpoint: RFC 6749)."""

from __future__ import annotations

import base64

import orjson
import pytest
from tests.support.reference_api import assert_error

from metricrelay.aiapi.errors import CODE_NOT_FOUND, CODE_PAYLOAD_LIMIT

pytestmark = pytest.mark.integration  # the reference server on a loopback port

MB = 1_000_000


def ok_metric(step: int = 0) -> dict:
    return {"name": "loss", "value": 0.5, "step": step, "timestamp": "2026-11-23T12:00:00Z"}


def body(**sections: object) -> dict:
    return {"executionId": "exec-0001", **sections}


INVALID = [
    (b"{not json", "body: invalid JSON"),
    (b"[]", "body: input should be an object"),
    (orjson.dumps({"metrics": []}), "executionId: is required"),
    (orjson.dumps({"executionId": "ab"}), "executionId: must be 4-64 characters"),
    (orjson.dumps(body(metrics=[ok_metric(), {"name": "!!", "value": 1}])), "metrics[1].name"),
    (
        orjson.dumps(body(metrics=[{"name": "a", "value": True}])),
        "metrics[0].value: must be a number",
    ),
    (orjson.dumps(body(metrics=[{"name": "a", "value": "1"}])), "metrics[0].value"),
    (orjson.dumps(body(metrics=[{"name": "a"}])), "metrics[0].value: is required"),
    (orjson.dumps(body(metrics=[{"name": "a", "value": 1, "step": -1}])), "metrics[0].step"),
    (
        orjson.dumps(body(metrics=[{"name": "a", "value": 1, "timestamp": "yesterday"}])),
        "metrics[0].timestamp",
    ),
    (
        orjson.dumps(
            body(metrics=[{"name": "a", "value": 1, "labels": [{"name": "", "value": "v"}]}])
        ),
        "metrics[0].labels[0].name",
    ),
    (orjson.dumps(body(tags=[{"name": "t", "value": "x" * 257}])), "tags[0].value"),
    (orjson.dumps(body(customInfo=[{"name": "c", "value": ""}])), "customInfo[0].value"),
    (orjson.dumps(body(metrics={"name": "a"})), "metrics: input should be a valid array"),
]


@pytest.mark.parametrize(("raw", "named"), INVALID, ids=[n for _, n in INVALID])
async def test_invalid_body_is_400_naming_the_item(api, raw, named) -> None:
    error = assert_error(await api.patch(raw), 400)
    assert named in error["message"]
    assert any(named in d["message"] for d in error["details"][1:])
    assert error["target"] == "/metrics"
    assert (await api.stats())["storage"] == {}  # nothing stored


async def test_every_error_of_a_body_is_a_detail(api) -> None:
    bad = body(metrics=[{"name": "!", "value": 1}, ok_metric(), {"name": "b", "value": False}])
    error = assert_error(await api.patch(bad), 400)
    paths = [d["message"].split(":")[0] for d in error["details"][1:]]
    assert paths == ["metrics[0].name", "metrics[2].value"]


LIMITS = [
    (body(metrics=[ok_metric(s) for s in range(1001)]), "metrics: 1001 items, at most 1000"),
    (body(tags=[{"name": f"t{i}", "value": "v"} for i in range(101)]), "tags: 101 items"),
    (
        body(customInfo=[{"name": f"c{i}", "value": "v"} for i in range(101)]),
        "customInfo: 101 items",
    ),
    (
        body(
            metrics=[
                {**ok_metric(), "labels": [{"name": f"l{i}", "value": "v"} for i in range(21)]}
            ]
        ),
        "metrics[0].labels: more than 20 labels",
    ),
    (
        body(
            customInfo=[
                {"name": "a", "value": "x" * (MB * 5 // 2)},
                {"name": "b", "value": "y" * (MB * 5 // 2)},
            ]
        ),
        "customInfo: 5000",
    ),
    # a count limit wins over invalid items: splitting it is what the client must do first
    (body(metrics=[{"name": "!!", "value": 1}] * 1001), "metrics: 1001 items"),
]


@pytest.mark.parametrize(("document", "reason"), LIMITS, ids=[r for _, r in LIMITS])
async def test_count_limits_are_413(api, document, reason) -> None:
    error = assert_error(await api.patch(document), 413, CODE_PAYLOAD_LIMIT)
    assert error["message"] == "PayloadLimitException"
    assert reason in error["details"][1]["message"]


async def test_the_limits_themselves_are_accepted(api) -> None:
    at_limit = body(
        metrics=[
            {**ok_metric(s), "labels": [{"name": f"l{i}", "value": "v"} for i in range(20)]}
            for s in range(1000)
        ],
        tags=[{"name": f"t{i}", "value": "v"} for i in range(100)],
        customInfo=[{"name": f"c{i}", "value": "v"} for i in range(100)],
    )
    assert (await api.patch(at_limit)).status == 204
    # 5 MB of customInfo, measured as encoded {"name","value"} items, is allowed
    overhead = len(orjson.dumps({"name": "c", "value": ""}))
    exact = body(customInfo=[{"name": "c", "value": "x" * (5 * MB - overhead)}])
    assert (await api.patch(exact)).status == 204


async def test_body_above_max_body_bytes_is_413_by_content_length(start_api) -> None:
    api = await start_api(max_body_bytes=1000)
    document = body(metrics=[ok_metric(s) for s in range(20)])
    error = assert_error(await api.patch(document), 413, CODE_PAYLOAD_LIMIT)
    assert "exceeds the limit of 1000 bytes" in error["details"][1]["message"]
    assert (await api.patch(body(metrics=[ok_metric()]))).status == 204


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/merge-patch+json", 204),
        ("application/json", 204),
        ("application/json; charset=utf-8", 204),
    ],
)
async def test_both_json_content_types(api, content_type, status) -> None:
    reply = await api.patch(body(metrics=[ok_metric()]), headers={"Content-Type": content_type})
    assert reply.status == status


async def test_other_content_type_is_415(api) -> None:
    reply = await api.patch(body(), headers={"Content-Type": "text/plain"})
    assert "not supported" in assert_error(reply, 415)["message"]


@pytest.mark.parametrize(
    "route",
    [
        ("PATCH", "/v2/lm/metrics"),
        ("GET", "/v2/lm/metrics"),
        ("DELETE", "/v2/lm/metrics"),
        ("GET", "/v2/lm/meta"),
    ],
)
@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Missing bearer token"),
        ("Bearer ", "Missing bearer token"),
        ("Basic Zm9vOmJhcg==", "Missing bearer token"),
        ("Bearer not-a-token", "Unknown bearer token"),
    ],
)
async def test_v2_calls_need_a_live_token(api, route, authorization, message) -> None:
    method, path = route
    headers = {"AI-Resource-Group": "default"}
    if authorization is not None:
        headers["Authorization"] = authorization
    reply = await api.request(
        method, path, auth_headers=False, headers=headers, params={"executionIds": "exec-0001"}
    )
    assert assert_error(reply, 401)["message"].startswith(message)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_expired_token_is_401(start_api) -> None:
    api = await start_api(token_expires_in=0)
    error = assert_error(await api.get(executionIds="exec-0001"), 401)
    assert error["message"] == "Bearer token expired"


async def test_token_ages_by_the_injected_clock(start_api) -> None:
    now = [1000.0]
    api = await start_api(token_expires_in=60, monotonic=lambda: now[0])
    assert (await api.get(executionIds="exec-0001")).status == 200
    now[0] += 59.9
    assert (await api.get(executionIds="exec-0001")).status == 200
    now[0] += 0.1
    assert_error(await api.get(executionIds="exec-0001"), 401)


async def test_a_fixed_token_is_accepted(start_api) -> None:
    api = await start_api(static_token="fixed-token-1")
    reply = await api.request(
        "GET",
        "/v2/lm/metrics",
        params={"executionIds": "exec-0001"},
        headers=api.headers("fixed-token-1"),
    )
    assert reply.status == 200


@pytest.mark.parametrize(
    ("group", "message"),
    [("", "Missing header AI-Resource-Group"), ("team a", "AI-Resource-Group: must be")],
)
async def test_resource_group_header_is_required(api, group, message) -> None:
    headers = api.headers(group=group)
    if not group:
        del headers["AI-Resource-Group"]
    for method in ("PATCH", "GET", "DELETE"):
        reply = await api.request(
            method,
            "/v2/lm/metrics",
            auth_headers=False,
            headers=headers,
            params={"executionIds": "exec-0001", "executionId": "exec-0001"},
            data=orjson.dumps(body()) if method == "PATCH" else None,
        )
        assert assert_error(reply, 400)["message"].startswith(message)


GET_REFUSALS = [
    ({}, 400, "one of the query parameters executionIds, $filter, tagFilters is required"),
    (
        {"executionIds": ",".join(f"exec-{i:04d}" for i in range(11))},
        400,
        "executionIds: at most 10",
    ),
    ({"executionIds": "x"}, 400, "executionIds: 'x' is not an execution id"),
    ({"executionIds": "exec-0001", "$select": "labels"}, 400, "$select: 'labels'"),
    ({"executionIds": "exec-0001", "$top": "10001"}, 400, "$top: must be an integer"),
    ({"executionIds": "exec-0001", "$top": "ten"}, 400, "$top: must be an integer"),
    ({"executionIds": "exec-0001", "$skip": "-1"}, 400, "$skip: must be an integer"),
    ({"tagFilters": "a=b," * 100 + "c"}, 400, "tagFilters: at most 100 expressions"),
    ({"tagFilters": "a=" + "b" * 5000}, 400, "tagFilters: at most 5000 characters"),
    ({"tagFilters": "a="}, 400, "tagFilters[0]: 'a='"),
    ({"tagFilters": "=b"}, 400, "tagFilters[0]"),
    ({"$filter": "executionId eq exec-0001"}, 400, "$filter: cannot parse"),
    ({"$filter": "executionId ne 'exec-0001'"}, 501, "$filter: only"),
    ({"$filter": "executionId eq 'x'"}, 400, "$filter: 'x' is not an execution id"),
]


@pytest.mark.parametrize(
    ("params", "status", "message"), GET_REFUSALS, ids=[m for *_, m in GET_REFUSALS]
)
async def test_get_refusals(api, params, status, message) -> None:
    error = assert_error(await api.get(**params), status)
    assert error["message"].startswith(message)


async def test_delete_refusals(api) -> None:
    missing = await api.request("DELETE", "/v2/lm/metrics")
    assert "executionId: the query parameter is required" in assert_error(missing, 400)["message"]
    plural = await api.request("DELETE", "/v2/lm/metrics", params={"executionIds": "exec-0001"})
    assert_error(plural, 400)
    unknown = await api.request("DELETE", "/v2/lm/metrics", params={"executionId": "exec-0001"})
    error = assert_error(unknown, 404, CODE_NOT_FOUND)
    assert error["message"] == "Metrics was not found."


async def test_unknown_route_and_method_have_the_error_shape(api) -> None:
    assert_error(await api.request("GET", "/v2/lm/nothing"), 404)
    not_allowed = await api.request("POST", "/v2/lm/metrics", data=b"{}")
    assert_error(not_allowed, 405)
    assert "PATCH" in not_allowed.headers["Allow"]


TOKEN_REFUSALS = [
    ({"grant_type": "password"}, None, 400, "unsupported_grant_type"),
    ({"client_id": "sb-test-client"}, None, 400, "invalid_request"),
    ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
    (
        {"grant_type": "client_credentials", "client_id": "sb-test-client", "client_secret": "no"},
        None,
        401,
        "invalid_client",
    ),
    (
        {"grant_type": "client_credentials", "client_id": "other", "client_secret": "s3cret"},
        None,
        401,
        "invalid_client",
    ),
    ({"grant_type": "client_credentials"}, "Basic !!!", 401, "invalid_client"),
    (
        {"grant_type": "client_credentials"},
        "Basic " + base64.b64encode(b"sb-test-client:no").decode(),
        401,
        "invalid_client",
    ),
]


@pytest.mark.parametrize(("form", "authorization", "status", "error"), TOKEN_REFUSALS)
async def test_token_refusals_in_rfc6749_form(api, form, authorization, status, error) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    reply = await api.request(
        "POST", "/oauth/token", auth_headers=False, data=form, headers=headers
    )
    assert reply.status == status
    assert set(reply.json) == {"error", "error_description"}
    assert reply.json["error"] == error
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Basic")


async def test_token_by_form_and_by_http_basic(api) -> None:
    by_form = await api.fetch_token()
    assert by_form.status == 200
    assert by_form.json["token_type"] == "bearer"
    assert by_form.json["expires_in"] == 43199
    basic = base64.b64encode(b"sb-test-client:s3cret").decode()
    by_basic = await api.request(
        "POST",
        "/oauth/token",
        auth_headers=False,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert by_basic.status == 200
    token = by_basic.json["access_token"]
    assert token != by_form.json["access_token"]
    reply = await api.request(
        "GET", "/v2/lm/metrics", params={"executionIds": "exec-0001"}, headers=api.headers(token)
    )
    assert reply.status == 200


async def test_without_configured_client_any_client_gets_a_token(start_api) -> None:
    api = await start_api(client_id=None, client_secret=None, token_expires_in=600)
    reply = await api.fetch_token(client_id="anyone", client_secret="anything")
    assert reply.status == 200
    assert reply.json["expires_in"] == 600
