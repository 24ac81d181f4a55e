"""Fault injection: each flag, seeded repeatability, and the counters at /_stats."""

from __future__ import annotations

import random
import re
import time

import aiohttp
import pytest
from tests.support.reference_api import assert_error

from metricrelay.api import FaultConfig

pytestmark = pytest.mark.integration  # the reference server on a loopback port

BODY = {
    "executionId": "exec-0001",
    "metrics": [{"name": "loss", "value": 1, "timestamp": "2026-11-23T12:00:00Z"}],
}


async def outcome(api, body=BODY, **kwargs) -> str:
    """The status of one PATCH as text, or ``reset`` when the connection dropped unanswered."""
    try:
        return str((await api.patch(body, **kwargs)).status)
    except aiohttp.ClientError:  # ServerDisconnectedError / ClientOSError (reset by peer)
        return "reset"


async def stored_points(api) -> int:
    reply = await api.get(executionIds="exec-0001")
    return sum(len(r["metrics"]) for r in reply.json["resources"])


async def test_fail_rate_answers_503_on_patch_only(start_api) -> None:
    api = await start_api(fail_rate=1.0, seed=1)
    error = assert_error(await api.patch(BODY), 503)
    assert "--fail-rate" in error["message"]
    assert (await api.get(executionIds="exec-0001")).status == 200  # GET is not a fault target
    assert await stored_points(api) == 0
    stats = await api.stats()
    assert stats["faults"] == {"fail": 1}
    assert stats["responses"]["503"] == 1
    assert stats["requests"]["POST /oauth/token"] == 1  # the token endpoint is never faulted


async def test_throttle_rate_answers_429_with_retry_after(start_api) -> None:
    api = await start_api(throttle_rate=1.0, retry_after_s=7, seed=1)
    reply = await api.patch(BODY)
    assert_error(reply, 429)
    assert reply.headers["Retry-After"] == "7"
    assert (await api.stats())["faults"] == {"throttle": 1}


async def test_latency_delays_each_faultable_request(start_api) -> None:
    api = await start_api(latency_ms=150.0)
    started = time.perf_counter()
    assert (await api.patch(BODY)).status == 204
    assert time.perf_counter() - started >= 0.15
    assert (await api.stats())["faults"] == {"delayed": 1}


async def test_reset_before_drops_the_connection_and_stores_nothing(start_api) -> None:
    api = await start_api(reset_rate=1.0, seed=1)
    assert await outcome(api) == "reset"
    assert await stored_points(api) == 0
    stats = await api.stats()
    assert stats["faults"] == {"reset": 1}
    assert stats["responses"]["reset"] == 1
    assert "204" not in stats["responses"]


async def test_reset_after_stores_and_loses_the_answer(start_api) -> None:
    api = await start_api(reset_rate=1.0, reset_when="after", seed=1)
    assert await outcome(api) == "reset"
    assert await stored_points(api) == 1
    assert await outcome(api) == "reset"  # the client's retry: harmless, the point is there once
    assert await stored_points(api) == 1
    assert (await api.stats())["storage"]["points_duplicate"] == 1


def expected_outcomes(
    seed: int, count: int, reset: float, fail: float, throttle: float
) -> list[str]:
    """What the documented draw order (reset, fail, throttle per request) gives for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        r, f, t = rng.random(), rng.random(), rng.random()
        out.append(
            "reset" if r < reset else "503" if f < fail else "429" if t < throttle else "204"
        )
    return out


async def test_a_seed_replays_the_same_faults(start_api) -> None:
    rates = {"reset_rate": 0.2, "fail_rate": 0.2, "throttle_rate": 0.2}
    runs = []
    for seed in (42, 42, 43):
        api = await start_api(seed=seed, **rates)
        runs.append([await outcome(api) for _ in range(40)])
        assert (await api.stats())["seed"] == seed
    assert runs[0] == runs[1] == expected_outcomes(42, 40, 0.2, 0.2, 0.2)
    assert runs[2] == expected_outcomes(43, 40, 0.2, 0.2, 0.2)
    assert runs[0] != runs[2]
    assert set(runs[0]) == {"reset", "503", "429", "204"}


async def test_max_metrics_per_request(start_api) -> None:
    api = await start_api(max_metrics_per_request=10)
    metrics = [{"name": "loss", "value": 1, "step": s} for s in range(11)]
    error = assert_error(await api.patch({**BODY, "metrics": metrics}), 413, "02000005")
    assert "11 items, at most 10 per request" in error["details"][1]["message"]
    assert (await api.patch({**BODY, "metrics": metrics[:10]})).status == 204
    assert (await api.stats())["faults"] == {"too_many_metrics": 1}


async def test_reject_names(start_api) -> None:
    api = await start_api(reject_names=re.compile(r"^debug_"))
    metrics = [{"name": "loss", "value": 1}, {"name": "debug_grad", "value": 2}]
    error = assert_error(await api.patch({**BODY, "metrics": metrics}), 400)
    assert error["message"].startswith("Invalid MetricResource: metrics[1].name: 'debug_grad'")
    assert await stored_points(api) == 0  # the whole body is refused, as a real 400 would be
    assert (await api.patch({**BODY, "metrics": metrics[:1]})).status == 204
    assert (await api.stats())["faults"] == {"rejected_name": 1}


async def test_fault_methods_widen_the_targets(start_api) -> None:
    api = await start_api(fail_rate=1.0, methods=frozenset({"GET", "PATCH"}))
    assert_error(await api.get(executionIds="exec-0001"), 503)
    assert (await api.request("GET", "/_stats", auth_headers=False)).status == 200


async def test_in_cluster_endpoint_is_faulted_too(start_api) -> None:
    api = await start_api(fail_rate=1.0)
    reply = await api.patch(BODY, path="/api/v1/metrics", auth_headers=False)
    assert_error(reply, 503)


async def test_without_faults_the_in_cluster_endpoint_needs_no_auth(start_api) -> None:
    api = await start_api(tracking_resource_group="tenant")
    reply = await api.patch(BODY, path="/api/v1/metrics", auth_headers=False)
    assert reply.status == 204
    assert (await api.resource("exec-0001", group="tenant"))["metrics"][0]["name"] == "loss"


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rates_outside_zero_one_are_refused(rate) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultConfig(fail_rate=rate)
