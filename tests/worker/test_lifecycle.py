"""Worker processes killed, stopped and re-authenticated: nothing lost, no secret shown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.waiting import until

from metricrelay.devtools.demo_stack import QUICK_WORKER_ENV, ChildProcess, start_worker
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys()
SECRET = "s3cret-value"
QUICK = {
    **QUICK_WORKER_ENV,
    "METRICRELAY_RETRY_BASE": "0.01",
    "METRICRELAY_RETRY_CAP": "0.1",
    "METRICRELAY_CONCURRENCY": "2",
}


def oauth_env(api: Any, secret: str) -> dict[str, str]:
    """Client credentials against the scripted token endpoint, instead of a fixed token."""
    base = api.url.removesuffix("/v2/lm/metrics")
    return {
        "METRICRELAY_TOKEN": "",  # empty: unset
        "METRICRELAY_AUTH_URL": f"{base}/oauth/token",
        "METRICRELAY_CLIENT_ID": "client-1",
        "METRICRELAY_CLIENT_SECRET": secret,
    }


Launch = Callable[..., ChildProcess]


@pytest.fixture
def launch(tmp_path: Path, redis_server: RedisServer, scripted_api: Any) -> Iterator[Launch]:
    """``launch(number, burst=False, **env)``: worker ``number`` (its own consumer name) on the
    test Redis and the scripted API, logging at DEBUG; stopped at the end if still running."""
    started: list[ChildProcess] = []

    def start(number: int, *, burst: bool = False, **env: str) -> ChildProcess:
        worker = start_worker(
            tmp_path,
            number,
            redis_server.url,
            scripted_api.url.removesuffix("/v2/lm/metrics"),
            burst=burst,
            args=("--log-level", "DEBUG"),
            **{**QUICK, **env},
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


async def exited(worker: ChildProcess, timeout: float) -> int:
    """The worker's exit code, once it has exited (the scripted API runs on this event loop)."""
    await until(
        lambda: worker.process.poll() is not None, timeout=timeout, what=f"{worker.name} exits"
    )
    return worker.stop()


async def write_points(client: redis_asyncio.Redis, executions: int, entries: int, per: int) -> int:
    pipe = client.pipeline(transaction=False)
    for e in range(executions):
        for n in range(entries):
            metrics = [{"name": "loss", "value": 1.0, "step": n * per + i} for i in range(per)]
            pipe.xadd(
                KEYS.events,
                {"resource": orjson.dumps({"executionId": f"exec-{e:03d}", "metrics": metrics})},
            )
    await pipe.execute()
    return executions * entries * per


def delivered(api: Any) -> tuple[set[tuple[str, int]], int]:
    points = [(d["executionId"], m["step"]) for d in api.accepted for m in d["metrics"]]
    return set(points), len(points) - len(set(points))


async def test_sigkill_mid_run_another_worker_reclaims_and_nothing_is_lost(
    redis_client: redis_asyncio.Redis, scripted_api: Any, launch: Launch
) -> None:
    total = await write_points(redis_client, executions=10, entries=20, per=100)
    scripted_api.delay = 0.02
    victim = launch(1)
    await until(lambda: len(scripted_api.accepted) >= 5)
    victim.kill()
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0
    rescuer = launch(2, burst=True)
    assert await exited(rescuer, 60) == 0, rescuer.log_text()
    unique, duplicates = delivered(scripted_api)
    assert len(unique) == total
    print(f"SIGKILL: {total} points delivered, {duplicates} delivered twice (at-least-once)")
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0


async def test_sigterm_drains_and_exits_0_within_the_deadline(
    redis_client: redis_asyncio.Redis, scripted_api: Any, launch: Launch
) -> None:
    total = await write_points(redis_client, executions=5, entries=40, per=50)
    scripted_api.delay = 0.01
    worker = launch(1, METRICRELAY_DRAIN_DEADLINE="10")
    await until(lambda: len(scripted_api.accepted) >= 3)
    started = asyncio.get_running_loop().time()
    worker.process.send_signal(signal.SIGTERM)
    assert await exited(worker, 20) == 0, worker.log_text()
    assert asyncio.get_running_loop().time() - started < 10 + 2
    # what it had taken it delivered and acknowledged; the rest was never taken from the stream
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0
    finisher = launch(2, burst=True)
    await exited(finisher, 60)
    assert len(delivered(scripted_api)[0]) == total


async def test_token_expiry_and_401_refresh_and_the_secret_is_never_shown(
    redis_client: redis_asyncio.Redis, scripted_api: Any, launch: Launch
) -> None:
    total = await write_points(redis_client, executions=4, entries=30, per=20)
    scripted_api.token_lifetime = 1  # expires within the run
    scripted_api.delay = 0.005
    refused_once = set()

    def answer(
        document: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in scripted_api.tokens_issued:
            return (401, {}, b'{"error":{"code":"401","message":"unknown token"}}')
        if token == "tok-1" and not refused_once:  # revoked early: a 401 mid-run
            refused_once.add(token)
            return (401, {}, b'{"error":{"code":"401","message":"expired"}}')
        return (204, {}, b"")

    scripted_api.answer = answer
    env = oauth_env(scripted_api, SECRET)
    worker = launch(1, burst=True, **env)
    assert await exited(worker, 60) == 0, worker.log_text()
    assert len(delivered(scripted_api)[0]) == total
    assert len(scripted_api.tokens_issued) >= 2
    assert scripted_api.token_forms[0]["grant_type"] == "client_credentials"
    output = worker.log_text()  # its stdout and stderr
    assert SECRET not in output
    for token in scripted_api.tokens_issued:
        assert token not in output
    assert await redis_client.xlen(KEYS.dead) == 0


async def test_refused_credentials_stop_the_worker_and_lose_nothing(
    redis_client: redis_asyncio.Redis, scripted_api: Any, launch: Launch
) -> None:
    await write_points(redis_client, executions=2, entries=3, per=10)
    env = oauth_env(scripted_api, "wrong-secret")
    worker = launch(1, burst=True, **env)
    assert await exited(worker, 60) == 2
    output = worker.log_text()  # its stdout and stderr
    assert "refused the credentials" in output
    assert "wrong-secret" not in output
    assert scripted_api.accepted == []
    assert await redis_client.xlen(KEYS.dead) == 0  # nothing dead-lettered for a config error
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0


async def test_a_second_signal_exits_at_once_leaving_work_pending(
    redis_client: redis_asyncio.Redis, scripted_api: Any, launch: Launch
) -> None:
    await write_points(redis_client, executions=3, entries=5, per=10)
    scripted_api.delay = 60.0  # requests hang: a drain could only end at its deadline
    worker = launch(
        1,
        METRICRELAY_DRAIN_DEADLINE="25",
        METRICRELAY_REQUEST_TIMEOUT="50",
        METRICRELAY_RETRY_BUDGET="100",
    )
    await until(lambda: scripted_api.patches_started > 0)  # a request is hanging in the server
    started = asyncio.get_running_loop().time()
    worker.process.send_signal(signal.SIGTERM)
    # the first signal was handled; a second one now is not merged with it
    await until(lambda: "stopping: draining" in worker.log_text(), timeout=10)
    worker.process.send_signal(signal.SIGTERM)
    assert await exited(worker, 10) != 0
    assert asyncio.get_running_loop().time() - started < 10  # far below the 25 s deadline
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0
