"""Emitter → Redis → worker → reference API, against real servers; outages; many ranks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from tests.support.reference_api import read_back

from metricrelay import AsyncEmitter, BufferFull, Emitter, PointError
from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration  # a real redis-server

KEYS = Keys()


def stream_steps(url: str, execution_id: str) -> list[int]:
    """Every step of ``execution_id`` in the event stream (what producers wrote)."""
    client = redis.Redis.from_url(url)
    steps = []
    for _, fields in client.xrange(KEYS.events):
        fragment = orjson.loads(fields[b"resource"])
        if fragment["executionId"] == execution_id:
            steps += [m["step"] for m in fragment.get("metrics", [])]
    return steps


def emitter(server: RedisServer, execution_id: str, **options: Any) -> Emitter:
    options.setdefault("flush_interval", 0.02)
    return Emitter(execution_id, redis_url=server.url, handle_sigterm=False, **options)


def test_round_trip_and_the_end_of_run_barrier(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
) -> None:
    with emitter(private_redis, "run-emitter-1") as run:
        run.log_metric("loss", 1.0, step=0)
        with pytest.raises(TimeoutError):  # no worker yet: nothing can be delivered
            run.flush(timeout=0.5, wait_delivered=True)
        start_worker(private_redis.url, api)
        for step in range(1, 3000):
            run.log_metrics(
                {"loss": 1 / (step + 1), "acc": step / 3000}, step=step, labels={"rank": "0"}
            )
        run.set_tags({"stage": "dev"})
        run.log_custom_info("Classification Report", {"accuracy": 0.9})
        run.log_figure("curve", "<svg xmlns='http://www.w3.org/2000/svg'></svg>")
        run.log_figure("png", b"\x89PNG\r\n\x1a\nfake")
        run.log_list_metric("lr", [0.1, 0.05, 0.01], start_step=7)
        report = run.flush(timeout=60, wait_delivered=True)
    assert report is not None
    assert report.accepted == 1 + 2 * 2999 + 3
    assert report.dead == {}
    resource = read_back(api, "run-emitter-1")
    assert len(resource["metrics"]) == 6002
    assert [m["step"] for m in resource["metrics"] if m["name"] == "lr"] == [7, 8, 9]
    assert {(t["name"], t["value"]) for t in resource["tags"]} == {("stage", "dev")}
    infos = {c["name"]: c["value"] for c in resource["customInfo"]}
    assert json.loads(infos["Classification Report"]) == {"accuracy": 0.9}
    assert infos["png"] == "iVBORw0KGgpmYWtl"  # base64 of the PNG bytes
    labelled = [m for m in resource["metrics"] if m["name"] == "acc"]
    assert labelled[0]["labels"] == [{"name": "rank", "value": "0"}]


def test_bad_points_raise_at_the_call_or_are_dropped_with_a_warning(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with emitter(private_redis, "run-bad-1") as run:
        for bad in ({"name": "!!!"}, {"value": float("nan")}, {"value": True}, {"step": -1}):
            args = {"name": "loss", "value": 1.0, "step": 0} | bad
            with pytest.raises(PointError):
                run.log_metric(**args)
        with pytest.raises(PointError, match="at most 20 labels"):
            run.log_metric("loss", 1.0, labels={f"l{i}": "v" for i in range(21)})
        with pytest.raises(PointError, match="5000000"):
            run.log_figure("huge", "x" * 5_000_001)
    with emitter(private_redis, "run-bad-2", on_error="warn") as lenient:
        lenient.log_metric("loss", float("inf"))
        lenient.log_metric("loss", 2.0, step=1)
        lenient.flush(timeout=10)
    assert "dropped an invalid point" in caplog.text
    assert stream_steps(private_redis.url, "run-bad-2") == [1]


def test_block_policy_loses_nothing_across_a_redis_restart(private_redis: RedisServer) -> None:
    run = emitter(private_redis, "run-restart", max_buffer_bytes=96 * 300, block_timeout=60)
    for step in range(2000):
        run.log_metric("loss", 1.0, step=step)
    run.flush(timeout=10)
    private_redis.stop()
    # the outage lasts a second; meanwhile the buffer fills and log_metric waits for room
    restart = threading.Timer(1.0, private_redis.restart)
    restart.start()
    for step in range(2000, 4000):
        run.log_metric("loss", 1.0, step=step)
    restart.join()
    run.flush(timeout=30)
    run.close()
    assert run.blocked > 0
    assert sorted(stream_steps(private_redis.url, "run-restart")) == list(range(4000))


def test_drop_policy_never_stalls_the_step_and_counts_what_it_dropped(
    private_redis: RedisServer,
) -> None:
    run = emitter(private_redis, "run-drop", max_buffer_bytes=96 * 100, policy="drop")
    private_redis.stop()
    slowest = 0.0
    for step in range(3000):
        started = time.perf_counter()
        run.log_metric("loss", 1.0, step=step)
        slowest = max(slowest, time.perf_counter() - started)
    private_redis.restart()
    run.flush(timeout=30)
    run.close()
    assert run.dropped > 0
    assert run.written_points + run.dropped == 3000
    assert len(stream_steps(private_redis.url, "run-drop")) == run.written_points
    assert slowest < 0.25  # the bound: drop never waits for Redis (a call takes microseconds)


RANK_SCRIPT = """
import json, sys
from metricrelay import Emitter
rank = int(sys.argv[1])
with Emitter("run-8-ranks", redis_url=sys.argv[2], flush_interval=0.02) as run:
    for step in range(1000):
        run.log_metric("loss", 1.0 / (step + 1), step=step, labels={"rank": str(rank)})
    report = run.flush(timeout=90, wait_delivered=True)
print(json.dumps({"entries": report.entries, "accepted": report.accepted}))
"""


def test_eight_processes_log_to_one_execution(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
) -> None:
    start_worker(private_redis.url, api)
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, str(rank), private_redis.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in range(8)
    ]
    reports = []
    for process in ranks:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        reports.append(json.loads(out))
    assert all(r["entries"] >= 1 for r in reports)
    resource = read_back(api, "run-8-ranks")
    by_rank: dict[str, list[int]] = {}
    for metric in resource["metrics"]:
        by_rank.setdefault(metric["labels"][0]["value"], []).append(metric["step"])
    assert {rank: sorted(steps) for rank, steps in by_rank.items()} == {
        str(rank): list(range(1000)) for rank in range(8)
    }
    # the last rank to finish saw the whole execution accepted
    assert max(r["accepted"] for r in reports) == 8000


async def test_async_emitter_round_trip(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
) -> None:
    start_worker(private_redis.url, api)
    async with AsyncEmitter("run-async-1", redis_url=private_redis.url, flush_interval=0.02) as run:
        for step in range(500):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        run.set_tags({"mode": "async"})
        report = await run.flush(timeout=60, wait_delivered=True)
    assert report is not None and report.accepted == 500
    resource = read_back(api, "run-async-1")
    assert sorted(m["step"] for m in resource["metrics"]) == list(range(500))


def small_async(server: RedisServer, execution_id: str, **options: Any) -> AsyncEmitter:
    """An AsyncEmitter whose buffer holds 100 points and whose writer task wakes only when
    asked (no timed flush)."""
    return AsyncEmitter(
        execution_id,
        redis_url=server.url,
        max_buffer_bytes=96 * 100,
        flush_interval=60,
        **options,
    )


async def test_async_block_policy_makes_room_from_the_loop_itself(
    private_redis: RedisServer,
) -> None:
    """A loop that logs without awaiting fills the buffer while the writer task cannot run:
    the call writes the queue's head itself instead of waiting out ``block_timeout`` for a task
    that never gets the loop, and then raising BufferFull."""
    async with small_async(private_redis, "run-async-full", block_timeout=5) as run:
        for step in range(3000):
            run.log_metric("loss", 1.0, step=step)
        assert run.blocked > 0 and run.dropped == 0
        await run.flush(timeout=30)
    assert stream_steps(private_redis.url, "run-async-full") == list(range(3000))


async def test_async_block_policy_gives_up_in_time_and_keeps_what_it_had_taken(
    private_redis: RedisServer,
) -> None:
    """No spool and Redis away: BufferFull after ``block_timeout``, and the batch the call
    tried to write goes back to the queue's head, so every point it had accepted arrives, in
    order, once Redis is back."""
    async with small_async(
        private_redis, "run-async-down", block_timeout=0.5, spool_max_bytes=0
    ) as run:
        private_redis.stop()
        accepted = 0
        with pytest.raises(BufferFull):
            for step in range(3000):
                run.log_metric("loss", 1.0, step=step)
                accepted += 1
        private_redis.restart()
        await run.flush(timeout=30)
    assert accepted > 0
    assert stream_steps(private_redis.url, "run-async-down") == list(range(accepted))


SIGTERM_SCRIPT = """
import sys, time
from metricrelay import Emitter
run = Emitter("run-sigterm", redis_url=sys.argv[1], flush_interval=60)  # no timed flush
for step in range(1000):
    run.log_metric("loss", 1.0, step=step)
print("logged", flush=True)
time.sleep(120)  # a training step that is still running when the pod is told to stop
"""


def test_sigterm_in_the_training_process_flushes_what_was_logged(
    private_redis: RedisServer,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, private_redis.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"logged\n"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, err.decode()
    assert sorted(stream_steps(private_redis.url, "run-sigterm")) == list(range(1000))
