"""The Emitter through a Redis outage (issue 18): training keeps stepping, every point arrives
in step order; a producer killed while spooling loses nothing its flush confirmed; the disk
bound applies the buffer policy."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.streams import stream_steps
from tests.support.waiting import until_sync

from metricrelay.devtools.embedded import RedisServer, free_port
from metricrelay.producer.emitter import Emitter

pytestmark = pytest.mark.integration

OUTAGE_S = 5.0


def url_flag(server: RedisServer) -> list[str]:
    return ["--redis-url", server.url]


def test_training_keeps_stepping_through_an_outage_and_every_point_arrives_in_order(
    tmp_path: Path,
) -> None:
    with RedisServer(tmp_path / "redis", appendonly="always") as server:
        run = Emitter("exec-outage", redis_url=server.url, spool_dir=str(tmp_path / "spool"))
        step, slowest = 0, 0.0

        def train(seconds: float) -> None:
            nonlocal step, slowest
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                run.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
                slowest = max(slowest, time.perf_counter() - started)
                step += 1
                time.sleep(0.0005)  # the training step's own work

        train(0.5)
        server.stop()  # Redis goes away for OUTAGE_S
        train(OUTAGE_S)
        until_sync(lambda: run.spooled > 0, timeout=10, what="the emitter spools")
        spooled_during = run.spooled
        port = server.port
        server.port = port
        server.start()
        train(0.5)
        run.flush(timeout=60)  # everything in Redis: the spool replayed
        assert run.spooled == 0
        run.close()
        got = stream_steps(server.url, "exec-outage")
    assert spooled_during > 0
    assert slowest < 0.5  # no call waited on Redis
    assert got == [s for s in range(step) for _ in (0, 1)]  # loss and lr of every step, in order
    assert not list((tmp_path / "spool").glob("*.spool"))  # replayed: deleted


_KILLED = """
import sys
from metricrelay.producer.emitter import Emitter, SpoolPending
run = Emitter("exec-killed", redis_url=sys.argv[1], spool_dir=sys.argv[2], flush_interval=0.02)
for step in range(400):
    run.log_metrics({"loss": 1.0}, step=step)
    if step % 100 == 99:
        try:
            run.flush(timeout=1)
        except SpoolPending:  # on disk, durable, not in Redis: what an outage looks like
            pass
        print(step, flush=True)
import time
time.sleep(60)  # killed here
"""


def test_a_producer_killed_in_an_outage_loses_nothing_it_flushed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = f"redis://127.0.0.1:{free_port()}/0"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, down, str(spool)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    lines = [child.stdout.readline() for _ in range(4)]  # bounded: four flushes
    assert [int(line) for line in lines] == [99, 199, 299, 399]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    with RedisServer() as server:
        done = subprocess.run(
            [sys.executable, "-m", "metricrelay", "spool", "replay", str(spool), *url_flag(server)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert stream_steps(server.url, "exec-killed") == list(range(400))
    assert not list(spool.glob("*.spool"))


def test_past_the_disk_bound_the_policy_applies_and_drops_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    run = Emitter(
        "exec-bound",
        redis_url=down,
        spool_dir=str(tmp_path),
        spool_max_bytes=20_000,
        max_buffer_bytes=20_000,
        policy="drop",
        flush_interval=0.01,
    )
    for step in range(5000):
        run.log_metrics({"loss": 1.0}, step=step)
        if step % 500 == 0:
            until_sync(lambda: run.spooled or run.dropped, timeout=10, what="spooling")
    until_sync(lambda: run.dropped > 0, timeout=10, what="drops past the bound")
    with caplog.at_level(logging.INFO, logger="metricrelay.producer"):
        run.close(timeout=2)
    disk = sum(path.stat().st_size for path in tmp_path.glob("*.spool"))
    assert 0 < disk <= 20_000
    messages = caplog.text
    assert f"dropped {run.dropped} points" in messages
    assert str(tmp_path) in messages  # where the spool was left
