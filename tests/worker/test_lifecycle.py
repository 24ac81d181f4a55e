"""Worker processes killed, stopped and re-authenticated: nothing lost, no secret shown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import orjson
import redis.asyncio as redis_asyncio

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

KEYS = Keys()
SECRET = "s3cret-value"


def oauth_env(env: dict[str, str], api: Any, secret: str) -> dict[str, str]:
    """The same environment, with client credentials against the scripted token endpoint."""
    base = api.url.removesuffix("/v2/lm/metrics")
    out = {k: v for k, v in env.items() if k != "METRICRELAY_TOKEN"}
    out.update(
        METRICRELAY_AUTH_URL=f"{base}/oauth/token",
        METRICRELAY_CLIENT_ID="client-1",
        METRICRELAY_CLIENT_SECRET=secret,
    )
    return out


def worker_env(redis_server: RedisServer, api: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    env.update(
        {
            "METRICRELAY_REDIS_URL": redis_server.url,
            "METRICRELAY_API_URL": api.url.removesuffix("/lm/metrics"),
            "METRICRELAY_TOKEN": "fixed-token",
            "METRICRELAY_LINGER": "0.05",
            "METRICRELAY_BLOCK_MS": "50",
            "METRICRELAY_RETRY_BASE": "0.01",
            "METRICRELAY_RETRY_CAP": "0.1",
            "METRICRELAY_RETRY_BUDGET": "2",
            "METRICRELAY_REQUEST_TIMEOUT": "2",
            "METRICRELAY_CONCURRENCY": "2",
            **extra,
        }
    )
    return env


async def start_worker(env: dict[str, str], *flags: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "metricrelay", "--log-level", "DEBUG", "worker", *flags,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


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


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Poll a condition with a deadline (the peer is another process: no event to await)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def delivered(api: Any) -> tuple[set[tuple[str, int]], int]:
    points = [(d["executionId"], m["step"]) for d in api.accepted for m in d["metrics"]]
    return set(points), len(points) - len(set(points))


async def test_sigkill_mid_run_another_worker_reclaims_and_nothing_is_lost(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    total = await write_points(redis_client, executions=10, entries=20, per=100)
    scripted_api.delay = 0.02
    env = worker_env(redis_server, scripted_api)
    victim = await start_worker(env)
    await until(lambda: len(scripted_api.accepted) >= 5)
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0
    rescuer = await start_worker(env, "--burst")
    _out, err = await asyncio.wait_for(rescuer.communicate(), 60)
    assert rescuer.returncode == 0, err.decode()
    unique, duplicates = delivered(scripted_api)
    assert len(unique) == total
    print(f"SIGKILL: {total} points delivered, {duplicates} delivered twice (at-least-once)")
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0


async def test_sigterm_drains_and_exits_0_within_the_deadline(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    total = await write_points(redis_client, executions=5, entries=40, per=50)
    scripted_api.delay = 0.01
    env = worker_env(redis_server, scripted_api, METRICRELAY_DRAIN_DEADLINE="10")
    worker = await start_worker(env)
    await until(lambda: len(scripted_api.accepted) >= 3)
    started = asyncio.get_running_loop().time()
    worker.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(worker.communicate(), 20)
    assert worker.returncode == 0, err.decode()
    assert asyncio.get_running_loop().time() - started < 10 + 2
    # what it had taken it delivered and acknowledged; the rest was never taken from the stream
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] == 0
    finisher = await start_worker(env, "--burst")
    await asyncio.wait_for(finisher.communicate(), 60)
    assert len(delivered(scripted_api)[0]) == total


async def test_token_expiry_and_401_refresh_and_the_secret_is_never_shown(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
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
    env = oauth_env(worker_env(redis_server, scripted_api), scripted_api, SECRET)
    worker = await start_worker(env, "--burst")
    out, err = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 0, err.decode()
    assert len(delivered(scripted_api)[0]) == total
    assert len(scripted_api.tokens_issued) >= 2
    assert scripted_api.token_forms[0]["grant_type"] == "client_credentials"
    output = out + err
    assert SECRET.encode() not in output
    for token in scripted_api.tokens_issued:
        assert token.encode() not in output
    assert await redis_client.xlen(KEYS.dead) == 0


async def test_refused_credentials_stop_the_worker_and_lose_nothing(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    await write_points(redis_client, executions=2, entries=3, per=10)
    env = oauth_env(worker_env(redis_server, scripted_api), scripted_api, "wrong-secret")
    worker = await start_worker(env, "--burst")
    out, err = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 2
    assert b"refused the credentials" in err
    assert b"wrong-secret" not in out + err
    assert scripted_api.accepted == []
    assert await redis_client.xlen(KEYS.dead) == 0  # nothing dead-lettered for a config error
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0


async def test_a_second_signal_exits_at_once_leaving_work_pending(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, scripted_api: Any
) -> None:
    await write_points(redis_client, executions=3, entries=5, per=10)
    scripted_api.delay = 60.0  # requests hang: a drain could only end at its deadline
    env = worker_env(
        redis_server,
        scripted_api,
        METRICRELAY_DRAIN_DEADLINE="25",
        METRICRELAY_REQUEST_TIMEOUT="50",
        METRICRELAY_RETRY_BUDGET="100",
    )
    worker = await start_worker(env)
    await until(lambda: scripted_api.patches_started > 0)  # a request is hanging in the server
    started = asyncio.get_running_loop().time()
    worker.send_signal(signal.SIGTERM)
    assert worker.stderr is not None
    while b"stopping: draining" not in await asyncio.wait_for(worker.stderr.readline(), 10):
        pass  # the first signal was handled; a second one now is not merged with it
    worker.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.wait(), 10)
    assert asyncio.get_running_loop().time() - started < 10  # far below the 25 s deadline
    assert worker.returncode != 0
    assert (await redis_client.xpending(KEYS.events, KEYS.group))["pending"] > 0
