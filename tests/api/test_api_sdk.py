"""SAP's own Python SDK (sap-ai-sdk-core, module ``ai_core_sdk``), unchanged, against the
reference server: the contract as it sees it."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest
import requests
from ai_api_client_sdk.exception import (
    AIAPIAuthenticatorAuthorizationException,
    AIAPIInvalidRequestException,
    AIAPINotFoundException,
    AIAPIServerException,
)
from ai_core_sdk.ai_core_v2_client import AICoreV2Client
from ai_core_sdk.models import Metric, MetricCustomInfo, MetricLabel, MetricTag
from ai_core_sdk.tracking import Tracking

from metricrelay.api.server import BackgroundServer

pytestmark = pytest.mark.integration  # the reference server on a loopback port

CLIENT_ID = "sb-test-client"
CLIENT_SECRET = "s3cret"
MOMENT = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def sdk(server: BackgroundServer, secret: str = CLIENT_SECRET, group: str = "default"):
    return AICoreV2Client(
        base_url=server.base_url,
        auth_url=server.auth_url,
        client_id=CLIENT_ID,
        client_secret=secret,
        resource_group=group,
    )


def stats(server: BackgroundServer) -> dict:
    return requests.get(f"{server.url}/_stats", timeout=10).json()


def points(count: int, name: str = "Training Loss") -> list[Metric]:
    return [
        Metric(
            name=name,
            value=1.0 / (step + 1),
            timestamp=MOMENT + timedelta(seconds=step),
            step=step,
            labels=[MetricLabel(name="rank", value=str(step % 2))],
        )
        for step in range(count)
    ]


def test_modify_query_delete_round_trip(background) -> None:
    server = background()
    client = sdk(server)
    client.metrics.modify(
        execution_id="exec-0001",
        metrics=points(3),
        tags=[MetricTag(name="stage", value="dev")],
        custom_info=[MetricCustomInfo(name="Confusion Matrix", value='{"tp": 34}')],
    )
    found = client.metrics.query(execution_ids=["exec-0001"])
    assert found.count == 1
    (res,) = found.resources
    assert res.execution_id == "exec-0001"
    assert [(m.name, m.value, m.step, m.timestamp) for m in res.metrics] == [
        ("Training Loss", 1.0 / (s + 1), s, MOMENT + timedelta(seconds=s)) for s in range(3)
    ]
    assert [(lb.name, lb.value) for lb in res.metrics[1].labels] == [("rank", "1")]
    assert [(t.name, t.value) for t in res.tags] == [("stage", "dev")]
    assert [(c.name, c.value) for c in res.custom_info] == [("Confusion Matrix", '{"tp": 34}')]

    client.metrics.delete(execution_id="exec-0001")
    assert client.metrics.query(execution_ids=["exec-0001"]).count == 0
    with pytest.raises(AIAPINotFoundException) as raised:
        client.metrics.delete(execution_id="exec-0001")
    assert raised.value.error_code == "02010055"
    assert raised.value.error_message == "Metrics was not found."


def test_query_with_select_and_several_execution_ids(background) -> None:
    server = background()
    client = sdk(server)
    for execution_id in ("exec-0001", "exec-0002", "exec-0003"):
        client.metrics.modify(
            execution_id=execution_id,
            metrics=points(2),
            tags=[MetricTag(name="run", value=execution_id)],
        )
    found = client.metrics.query(execution_ids=["exec-0001", "exec-0003"], select=["tags"])
    assert found.count == 2
    assert [r.execution_id for r in found.resources] == ["exec-0001", "exec-0003"]
    assert all(r.metrics is None and r.custom_info is None for r in found.resources)
    assert [r.tags[0].value for r in found.resources] == ["exec-0001", "exec-0003"]
    only_metrics = client.metrics.query(execution_ids=["exec-0002"], select=["metrics"])
    assert only_metrics.resources[0].tags is None
    assert len(only_metrics.resources[0].metrics) == 2


def test_query_with_the_deprecated_filter(background) -> None:
    server = background()
    client = sdk(server)
    for execution_id in ("exec-0001", "exec-0002", "exec-0003"):
        client.metrics.modify(execution_id=execution_id, metrics=points(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's own warning
        one = client.metrics.query(filter="executionId eq 'exec-0002'")
        two = client.metrics.query(filter="executionId in ('exec-0001','exec-0003')")
    assert [r.execution_id for r in one.resources] == ["exec-0002"]
    assert [r.execution_id for r in two.resources] == ["exec-0001", "exec-0003"]


def test_resource_group_override_scopes_storage(background) -> None:
    server = background()
    client = sdk(server, group="default")
    client.metrics.modify(execution_id="exec-0001", metrics=points(1), resource_group="team-b")
    assert client.metrics.query(execution_ids=["exec-0001"]).count == 0
    found = client.metrics.query(execution_ids=["exec-0001"], resource_group="team-b")
    assert found.count == 1
    with pytest.raises(AIAPINotFoundException):
        client.metrics.delete(execution_id="exec-0001")  # not in "default"
    client.metrics.delete(execution_id="exec-0001", resource_group="team-b")
    assert client.metrics.query(execution_ids=["exec-0001"], resource_group="team-b").count == 0


def test_token_flow_one_token_for_many_calls(background) -> None:
    server = background()
    client = sdk(server)
    for step in range(3):
        client.metrics.modify(execution_id="exec-0001", metrics=points(1, name=f"m{step}"))
    client.metrics.query(execution_ids=["exec-0001"])
    requests_seen = stats(server)["requests"]
    assert requests_seen["POST /oauth/token"] == 1  # cached for its 43199 s
    assert requests_seen["PATCH /v2/lm/metrics"] == 3


def test_token_flow_honours_expires_in(background) -> None:
    # The SDK refreshes a token with less than an hour left: 3599 s means a new one each call.
    server = background(token_expires_in=3599)
    client = sdk(server)
    for _ in range(3):
        client.metrics.query(execution_ids=["exec-0001"])
    assert stats(server)["requests"]["POST /oauth/token"] == 3


def test_token_flow_refuses_a_wrong_secret(background) -> None:
    server = background()
    client = sdk(server, secret="wrong")
    with pytest.raises(AIAPIAuthenticatorAuthorizationException):
        client.metrics.query(execution_ids=["exec-0001"])
    assert stats(server)["responses"]["401"] == 1


def test_meta(background) -> None:
    server = background()
    meta = sdk(server).meta.get()
    assert meta.runtime_identifier == "metricrelay-api"
    assert meta.ai_api.version.startswith("2.")


def test_missing_timestamp_gets_the_server_time(background) -> None:
    server = background(wall_clock=lambda: MOMENT)
    client = sdk(server)
    client.metrics.modify(
        execution_id="exec-0001", metrics=[Metric(name="accuracy", value=0.9, timestamp=None)]
    )
    (res,) = client.metrics.query(execution_ids=["exec-0001"]).resources
    assert res.metrics[0].timestamp == MOMENT


def test_invalid_body_is_a_400_naming_the_item(background) -> None:
    server = background()
    client = sdk(server)
    bad = [*points(2), Metric(name="!!!", value=1.0, timestamp=MOMENT)]
    with pytest.raises(AIAPIInvalidRequestException) as raised:
        client.metrics.modify(execution_id="exec-0001", metrics=bad)
    assert "metrics[2].name" in raised.value.error_message
    assert client.metrics.query(execution_ids=["exec-0001"]).count == 0  # all or nothing


def test_too_many_metrics_is_a_413(background) -> None:
    server = background()
    client = sdk(server)
    with pytest.raises(AIAPIServerException) as raised:
        client.metrics.modify(execution_id="exec-0001", metrics=points(1001))
    assert raised.value.status_code == 413
    assert raised.value.error_code == "02000005"
    assert raised.value.error_message == "PayloadLimitException"
    client.metrics.modify(execution_id="exec-0001", metrics=points(1000))  # the limit itself


def test_in_cluster_mode_patches_the_tracking_endpoint(background, monkeypatch) -> None:
    # sap-ai-sdk-core takes AICORE_EXECUTION_ID as the default execution id inside an execution:
    # an id given explicitly is sent as given (the deprecated ai-core-sdk overrode it).
    server = background(tracking_resource_group="tenant-rg")
    monkeypatch.setenv("AICORE_EXECUTION_ID", "exec-incluster")
    monkeypatch.setenv("AICORE_TRACKING_ENDPOINT", server.url)
    inside = sdk(server, secret="never-used")  # in-cluster: no token is ever fetched
    inside.metrics.modify(metrics=points(2), tags=[MetricTag(name="stage", value="train")])
    Tracking().log_metrics(metrics=points(1, name="val_loss"), artifact_name="model")
    inside.metrics.modify(execution_id="exec-explicit", metrics=points(1, name="other"))
    monkeypatch.delenv("AICORE_EXECUTION_ID")
    seen = stats(server)
    assert seen["requests"]["PATCH /api/v1/metrics"] == 3
    assert "POST /oauth/token" not in seen["requests"]

    outside = sdk(server, group="tenant-rg")
    (res,) = outside.metrics.query(execution_ids=["exec-incluster"]).resources
    assert [m.name for m in res.metrics] == ["Training Loss", "Training Loss", "val_loss"]
    artifact = [(lb.name, lb.value) for lb in res.metrics[2].labels]
    assert ("metrics.ai.sap.com/Artifact.name", "model") in artifact
    assert [(t.name, t.value) for t in res.tags] == [("stage", "train")]
    (explicit,) = outside.metrics.query(execution_ids=["exec-explicit"]).resources
    assert [m.name for m in explicit.metrics] == ["other"]
