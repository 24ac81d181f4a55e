"""``metricrelay emit`` through a Redis outage (issue 18): fragments go to a disk spool; at the
end of the input a spool Redis did not come back for is left on disk (exit 3) for
``metricrelay spool replay`` or the next ``emit``; every point arrives in order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from tests.support.cli import run_cli
from tests.support.streams import stream_steps
from tests.support.waiting import until_sync

from metricrelay.commands.emit import EXIT_SPOOLED
from metricrelay.devtools.embedded import RedisServer, free_port
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys()


def points(execution: str, steps: range) -> bytes:
    return b"".join(
        orjson.dumps({"executionId": execution, "name": "loss", "value": 0.5, "step": s}) + b"\n"
        for s in steps
    )


def fragments(execution: str, steps: range) -> bytes:
    """One fragment a line, each written as it is: a batch of XADDs every 500 lines."""
    return b"".join(
        orjson.dumps(
            {
                "executionId": execution,
                "metrics": [{"name": "loss", "value": 0.5, "step": s}],
                "tags": [{"name": "source", "value": "emit"}],
            }
        )
        + b"\n"
        for s in steps
    )


def test_redis_down_spools_exits_3_and_spool_replay_delivers_every_point_in_order(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    down = f"redis://127.0.0.1:{free_port()}/0"
    lines = points("run-emit-a", range(2500)) + points("run-emit-b", range(1250))
    done = run_cli(
        "emit", "--redis-url", down, "--spool-dir", str(spool), "--wait", "0.5", given=lines
    )
    assert done.returncode == EXIT_SPOOLED == 3, done.stderr
    assert f"5 entries wait in the spool in {spool}" in done.stderr
    assert "metricrelay spool replay" in done.stderr
    [segment] = spool.glob("*.spool")
    assert re.fullmatch(r"emit@\d+-[0-9a-f]{8}\.00000000\.spool", segment.name)

    listed = run_cli("spool", "replay", str(spool), "--dry-run")  # executions, from the records
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "run-emit-a\t3 record(s)\t2500 item(s)",
        "run-emit-b\t2 record(s)\t1250 item(s)",
    ]
    with RedisServer() as server:
        replayed = run_cli("spool", "replay", str(spool), "--redis-url", server.url)
        assert replayed.returncode == 0, replayed.stderr
        assert stream_steps(server.url, "run-emit-a") == list(range(2500))
        assert stream_steps(server.url, "run-emit-b") == list(range(1250))
    assert not list(spool.glob("*.spool"))


def test_the_next_emit_sends_what_an_earlier_one_left_before_its_own(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with RedisServer() as server:
        down = f"redis://127.0.0.1:{free_port()}/0"
        first = run_cli(
            "emit", "--redis-url", down, "--spool-dir", str(spool), "--wait", "0",
            given=points("run-emit-next", range(1500)),
        )  # fmt: skip
        assert first.returncode == EXIT_SPOOLED, first.stderr
        second = run_cli(
            "emit", "--redis-url", server.url, "--spool-dir", str(spool),
            given=points("run-emit-next", range(1500, 2000)),
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert "500 points in 1 entries written" in second.stderr
        assert stream_steps(server.url, "run-emit-next") == list(range(2000))
    assert list(spool.iterdir()) == []  # nothing left behind


def test_an_outage_mid_file_spools_and_the_end_waits_for_redis_to_replay_in_order(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    key = KEYS.route("default", "run-emit-mid").events
    with RedisServer(tmp_path / "redis", appendonly="always") as server:
        child = subprocess.Popen(
            [sys.executable, "-m", "metricrelay", "emit", "--redis-url", server.url,
             "--spool-dir", str(spool), "--wait", "30", "--no-progress"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert child.stdin is not None
        try:
            child.stdin.write(fragments("run-emit-mid", range(500)))
            child.stdin.flush()
            until_sync(
                lambda: redis.Redis.from_url(server.url).xlen(key) == 500,
                timeout=30,
                what="the first batch in Redis",
            )
            server.stop()  # Redis goes away in the middle of the file
            child.stdin.write(fragments("run-emit-mid", range(500, 1000)))
            child.stdin.flush()
            until_sync(lambda: list(spool.glob("emit@*.spool")), timeout=30, what="spooling")
            server.start()  # back, on the same port, with its data (AOF)
            child.stdin.write(fragments("run-emit-mid", range(1000, 1250)))
            child.stdin.close()
            code = child.wait(timeout=60)
        finally:
            child.kill()
            child.wait()
        assert child.stderr is not None
        err = child.stderr.read().decode()
        assert code == 0, err
        assert "spooling to" in err  # the outage was met, not missed
        assert stream_steps(server.url, "run-emit-mid") == list(range(1250))
    assert not list(spool.glob("*.spool"))
