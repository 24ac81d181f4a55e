"""A remote API's shape: a latency range drawn per request, and a tenant-wide request-rate limit
(token bucket on the server's clock, 429 with Retry-After beyond it), over real HTTP."""

from __future__ import annotations

import argparse
import random
import time

import aiohttp
import pytest

from metricrelay.api import FaultConfig
from metricrelay.api.faults import FaultInjector, TokenBucket
from metricrelay.api.stats import Stats
from metricrelay.cli import build_parser
from metricrelay.commands.api import config_from_args

BODY = {
    "executionId": "exec-0001",
    "metrics": [{"name": "loss", "value": 1, "timestamp": "2026-11-23T12:00:00Z"}],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def statuses(api, count: int, **kwargs) -> list[int]:
    return [(await api.patch(BODY, **kwargs)).status for _ in range(count)]


async def test_beyond_the_rate_limit_answers_429_with_retry_after(start_api, assert_error) -> None:
    clock = Clock()
    api = await start_api(rate_limit=2.0, rate_burst=3, retry_after_s=1, monotonic=clock)
    assert await statuses(api, 3) == [204, 204, 204]  # the burst
    reply = await api.patch(BODY)
    error = assert_error(reply, 429)
    assert reply.headers["Retry-After"] == "1"
    assert "--rate-limit 2 per second" in error["message"]
    clock.now += 0.5  # one token back at 2 per second
    assert await statuses(api, 2) == [204, 429]
    clock.now += 10.0  # the bucket holds at most the burst
    assert await statuses(api, 4) == [204, 204, 204, 429]
    stats = await api.stats()
    assert stats["faults"] == {"rate_limited": 3}
    assert stats["responses"]["429"] == 3
    assert stats["storage"]["patches"] == 7


async def test_the_limit_is_the_tenants_whoever_sends(start_api) -> None:
    clock = Clock()
    api = await start_api(rate_limit=1.0, monotonic=clock)  # the burst: one second's worth
    other_token = (await api.fetch_token()).json["access_token"]
    assert (await api.patch(BODY)).status == 204
    async with aiohttp.ClientSession() as other:  # another client, another token
        headers = {**api.headers(token=other_token), "Content-Type": "application/json"}
        async with other.patch(f"{api.url}/v2/lm/metrics", json=BODY, headers=headers) as reply:
            assert reply.status == 429
    # the in-cluster endpoint is the same tenant's
    assert (await api.patch(BODY, path="/api/v1/metrics", auth_headers=False)).status == 429
    assert (await api.get(executionIds="exec-0001")).status == 200  # GET is not limited
    clock.now += 1.0
    assert (await api.patch(BODY, path="/api/v1/metrics", auth_headers=False)).status == 204


async def test_rate_limited_requests_keep_the_seeded_fault_sequence(start_api) -> None:
    clock = Clock()
    api = await start_api(rate_limit=1.0, fail_rate=0.5, seed=3, monotonic=clock)
    got = []
    for _ in range(12):
        got.append((await api.patch(BODY)).status)
        clock.now += 0.5  # every other request finds the bucket empty
    rng = random.Random(3)
    expected = []
    for number in range(12):
        _reset, fail, _throttle = rng.random(), rng.random(), rng.random()
        expected.append(429 if number % 2 else 503 if fail < 0.5 else 204)
    assert got == expected


async def test_a_latency_range_delays_each_request_within_it(start_api) -> None:
    api = await start_api(latency_ms=20.0, latency_max_ms=40.0, seed=5)
    for _ in range(3):
        started = time.perf_counter()
        assert (await api.patch(BODY)).status == 204
        assert time.perf_counter() - started >= 0.020
    assert (await api.stats())["faults"] == {"delayed": 3}


def test_latencies_are_drawn_uniformly_from_the_seed() -> None:
    config = FaultConfig(latency_ms=50.0, latency_max_ms=200.0)
    one, two = (FaultInjector(config, Stats(seed=9)) for _ in range(2))
    drawn = [one.latency() for _ in range(2000)]
    assert drawn[:50] == [two.latency() for _ in range(50)]  # a seed replays the same delays
    assert all(0.050 <= d <= 0.200 for d in drawn)
    assert 0.115 < sum(drawn) / len(drawn) < 0.135  # uniform: a mean of 125 ms
    other = FaultInjector(config, Stats(seed=10))
    assert [other.latency() for _ in range(5)] != drawn[:5]
    # the fault draws do not move: a latency range changes no injected outcome
    plain = FaultInjector(FaultConfig(fail_rate=0.5), Stats(seed=9))
    ranged = FaultInjector(FaultConfig(fail_rate=0.5, latency_max_ms=5.0), Stats(seed=9))
    outcomes = []
    for _ in range(20):
        ranged.latency()
        outcomes.append((plain.draw(), ranged.draw()))
    assert all(a is b for a, b in outcomes)
    assert FaultInjector(FaultConfig(latency_ms=7.0), Stats(seed=1)).latency() == 0.007


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(20.0, 20, clock)
    assert sum(bucket.take() for _ in range(25)) == 20
    clock.now += 0.25  # five tokens
    assert sum(bucket.take() for _ in range(10)) == 5
    clock.now += 60.0
    assert sum(bucket.take() for _ in range(30)) == 20


def args_of(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["api", *flags])


def test_flags_of_a_remote_api() -> None:
    faults = config_from_args(
        args_of("--latency-ms", "50-200", "--rate-limit", "20", "--rate-burst", "5")
    ).faults
    assert (faults.latency_ms, faults.latency_max_ms) == (50.0, 200.0)
    assert (faults.rate_limit, faults.rate_burst, faults.burst) == (20.0, 5, 5)
    faults = config_from_args(args_of("--latency-ms", "7", "--rate-limit", "2.5")).faults
    assert (faults.latency_ms, faults.latency_max_ms, faults.burst) == (7.0, None, 3)
    assert config_from_args(args_of()).faults.rate_limit is None


@pytest.mark.parametrize(
    "flags",
    [
        ("--latency-ms", "200-50"),
        ("--latency-ms", "a-b"),
        ("--rate-limit", "0"),
        ("--rate-limit", "nan"),
        ("--rate-burst", "0"),
    ],
)
def test_bad_remote_flags_are_refused(flags: tuple[str, str], capsys) -> None:
    with pytest.raises(SystemExit):
        args_of(*flags)
    assert f"argument {flags[0]}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latency_ms": 10.0, "latency_max_ms": 5.0}, "latency_max_ms"),
        ({"rate_limit": 0.0}, "rate_limit"),
        ({"rate_limit": float("inf")}, "rate_limit"),
        ({"rate_limit": 1.0, "rate_burst": 0}, "rate_burst"),
    ],
)
def test_remote_options_are_checked(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultConfig(**options)  # type: ignore[arg-type]
