"""Storage: metrics append, identical points once, upsert by name, server time, groups, restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from metricrelay.api.storage import PatchOutcome

pytestmark = pytest.mark.integration  # the reference server on a loopback port

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def point(step: int | None, value: float = 1.0, **more: object) -> dict:
    item: dict = {"name": "loss", "value": value, "timestamp": "2026-11-23T12:00:00.000001Z"}
    if step is not None:
        item["step"] = step
    return {**item, **more}


async def test_identical_points_are_stored_once(api) -> None:
    labels = [{"name": "rank", "value": "0"}]
    body = {"executionId": "exec-0001", "metrics": [point(1, labels=labels), point(2)]}
    assert (await api.patch(body)).status == 204
    assert (await api.patch(body)).status == 204  # an at-least-once redelivery
    metrics = (await api.resource("exec-0001"))["metrics"]
    assert [(m["step"], m["labels"]) for m in metrics] == [(1, labels), (2, [])]
    storage = (await api.stats())["storage"]
    assert storage["points_received"] == 4
    assert storage["points_stored"] == 2
    assert storage["points_duplicate"] == 2


async def test_identity_is_name_step_timestamp_labels(api) -> None:
    base = point(1, labels=[{"name": "rank", "value": "0"}])
    variants = [
        base,
        {**base, "value": 99.0},  # same identity, other value: the first one is kept
        {**base, "labels": [{"value": "0", "name": "rank"}]},  # same label, keys reordered
        {**base, "name": "loss2"},
        {**base, "step": 2},
        {**base, "timestamp": "2026-11-23T12:00:00.000002Z"},
        {**base, "timestamp": "2026-11-23T13:00:00.000001+01:00"},  # the same instant
        {**base, "labels": [{"name": "rank", "value": "1"}]},
        {**base, "labels": []},
        point(None),
        point(None),  # an absent step collides with another absent step
        {**point(None), "step": None},  # null is read as absent
    ]
    for item in variants:
        assert (await api.patch({"executionId": "exec-0001", "metrics": [item]})).status == 204
    metrics = (await api.resource("exec-0001"))["metrics"]
    assert len(metrics) == 7
    assert metrics[0]["value"] == 1.0
    assert "step" not in metrics[-1]


async def test_metrics_append_in_arrival_order(api) -> None:
    for step in (3, 1, 2):
        assert (
            await api.patch({"executionId": "exec-0001", "metrics": [point(step)]})
        ).status == 204
    assert [m["step"] for m in (await api.resource("exec-0001"))["metrics"]] == [3, 1, 2]


async def test_tags_and_custom_info_upsert_by_name(api) -> None:
    first = {
        "executionId": "exec-0001",
        "tags": [{"name": "stage", "value": "dev"}, {"name": "team", "value": "vision"}],
        "customInfo": [{"name": "Confusion Matrix", "value": "{}"}],
    }
    second = {
        "executionId": "exec-0001",
        "tags": [{"name": "stage", "value": "prod"}],
        "customInfo": [{"name": "Confusion Matrix", "value": '{"tp": 1}'}],
    }
    await api.patch(first)
    await api.patch(second)
    found = await api.resource("exec-0001")
    assert found["tags"] == [
        {"name": "stage", "value": "prod"},
        {"name": "team", "value": "vision"},
    ]
    assert found["customInfo"] == [{"name": "Confusion Matrix", "value": '{"tp": 1}'}]
    assert found["metrics"] == []


async def test_server_time_and_created_modified(start_api) -> None:
    clock = Clock()
    api = await start_api(wall_clock=clock)
    await api.patch({"executionId": "exec-0001", "metrics": [{"name": "a", "value": 1}]})
    clock.now = T0 + timedelta(minutes=5, microseconds=7)
    await api.patch(
        {"executionId": "exec-0001", "metrics": [{"name": "a", "value": 2, "timestamp": None}]}
    )
    found = await api.resource("exec-0001")
    assert [m["timestamp"] for m in found["metrics"]] == [
        "2026-11-23T12:00:00.000000Z",
        "2026-11-23T12:05:00.000007Z",
    ]
    assert found["createdAt"] == "2026-11-23T12:00:00.000000Z"
    assert found["modifiedAt"] == "2026-11-23T12:05:00.000007Z"


async def test_timestamps_come_back_in_the_sdk_form(api) -> None:
    stamps = ["2026-11-23T13:00:00+01:00", "2026-11-23T12:00:00.123456789Z", "2026-11-23t12:00:00z"]
    body = {
        "executionId": "exec-0001",
        "metrics": [{"name": "a", "value": 1, "timestamp": t} for t in stamps],
    }
    await api.patch(body)
    found = await api.resource("exec-0001")
    assert [m["timestamp"] for m in found["metrics"]] == [
        "2026-11-23T12:00:00.000000Z",
        "2026-11-23T12:00:00.123456Z",
    ]  # the first and the third are the same point


async def test_resource_groups_are_separate(api) -> None:
    for group, value in (("team-a", 1.0), ("team-b", 2.0)):
        reply = await api.patch(
            {"executionId": "exec-0001", "metrics": [point(1, value)]},
            headers={"AI-Resource-Group": group},
        )
        assert reply.status == 204
    assert (await api.resource("exec-0001", group="team-a"))["metrics"][0]["value"] == 1.0
    assert (await api.resource("exec-0001", group="team-b"))["metrics"][0]["value"] == 2.0
    assert (await api.get(executionIds="exec-0001")).json == {"count": 0, "resources": []}
    deleted = await api.request(
        "DELETE",
        "/v2/lm/metrics",
        params={"executionId": "exec-0001"},
        headers={"AI-Resource-Group": "team-a"},
    )
    assert deleted.status == 200
    assert deleted.json == {
        "id": "exec-0001",
        "message": "Metric Resource was successfully deleted",
    }
    assert (await api.resource("exec-0001", group="team-b"))["metrics"][0]["value"] == 2.0


async def test_delete_removes_everything_and_a_new_patch_starts_afresh(start_api) -> None:
    clock = Clock()
    api = await start_api(wall_clock=clock)
    await api.patch(
        {"executionId": "exec-0001", "metrics": [point(1)], "tags": [{"name": "a", "value": "b"}]}
    )
    await api.request("DELETE", "/v2/lm/metrics", params={"executionId": "exec-0001"})
    clock.now = T0 + timedelta(hours=1)
    await api.patch({"executionId": "exec-0001", "metrics": [point(1)]})
    found = await api.resource("exec-0001")
    assert len(found["metrics"]) == 1
    assert found["tags"] == []
    assert found["createdAt"] == "2026-11-23T13:00:00.000000Z"


async def test_concurrent_patches_all_land(api) -> None:
    bodies = [
        {"executionId": f"exec-{n % 4:04d}", "metrics": [point(n * 100 + s) for s in range(100)]}
        for n in range(24)
    ]
    replies = await asyncio.gather(*(api.patch(b) for b in bodies))
    assert {r.status for r in replies} == {204}
    found = await api.get(executionIds="exec-0000,exec-0001,exec-0002,exec-0003")
    assert sum(len(r["metrics"]) for r in found.json["resources"]) == 2400


async def test_a_db_file_keeps_data_across_a_restart(start_api, tmp_path) -> None:
    db = str(tmp_path / "metrics.db")
    first = await start_api(db=db)
    body = {
        "executionId": "exec-0001",
        "metrics": [point(1), point(2)],
        "tags": [{"name": "stage", "value": "dev"}],
        "customInfo": [{"name": "c", "value": "v"}],
    }
    assert (await first.patch(body)).status == 204
    before = await first.resource("exec-0001")
    old_token = first.token
    await first.server.close()

    second = await start_api(db=db)
    assert await second.resource("exec-0001") == before
    assert (await second.patch(body)).status == 204  # a redelivery finds the stored points
    assert (await second.resource("exec-0001"))["metrics"] == before["metrics"]
    stale = await second.request(
        "GET",
        "/v2/lm/metrics",
        params={"executionIds": "exec-0001"},
        headers=second.headers(old_token),
    )
    assert stale.status == 401  # tokens live in memory only: clients fetch a new one


def test_patch_outcome_counts_duplicates() -> None:
    assert PatchOutcome(received=5, stored=3, tags=0, custom_info=0).duplicates == 2
