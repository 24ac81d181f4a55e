"""``metricrelay spool replay`` after a producer was SIGKILLed while spooling (issue 18)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from tests.support.cli import run_cli

from metricrelay.devtools.embedded import RedisServer, free_port
from metricrelay.keys import Keys
from metricrelay.producer.spool import Spool
from metricrelay.producer.spool_format import encode_record

pytestmark = pytest.mark.integration

EXECUTION = "exec-killed"

# Spools one step per record, saying so once the record is on disk, until it is killed.
_PRODUCER = """
import sys, orjson
from pathlib import Path
from metricrelay.producer.spool import Spool
spool = Spool(Path(sys.argv[1]), sys.argv[2], max_bytes=10**9, segment_bytes=4096)
step = 0
while True:
    body = {"executionId": sys.argv[2], "metrics": [{"name": "loss", "value": 1.0, "step": step}]}
    spool.append([(sys.argv[3], orjson.dumps(body))])
    print(step, flush=True)
    step += 1
"""


def stream_steps(client: redis.Redis, key: str) -> list[int]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(key)  # type: ignore[assignment]
    return [orjson.loads(fields[b"resource"])["metrics"][0]["step"] for _, fields in entries]


def test_a_killed_producers_spool_is_replayed_in_order(tmp_path: Path) -> None:
    key = Keys().route("default", EXECUTION).events
    child = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(tmp_path), EXECUTION, key],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    last = -1
    for line in child.stdout:  # bounded: the child counts up without end until killed
        last = int(line)
        if last >= 300:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    segments = sorted(tmp_path.glob("*.spool"))
    assert len(segments) > 1  # it rotated segments before dying
    # as a kill in the middle of a write would leave it: half a record at the end
    with segments[-1].open("ab") as file:
        file.write(encode_record(key, b'{"executionId": "torn"}')[:-3])

    listed = run_cli("spool", "replay", str(tmp_path), "--dry-run")
    assert listed.returncode == 0, listed.stderr
    [line, torn] = listed.stdout.splitlines()
    execution, records, _ = line.split("\t")
    assert execution == EXECUTION and int(records.split()[0]) > last
    assert "torn last record" in torn

    with RedisServer() as server:
        done = run_cli("spool", "replay", str(tmp_path), "--redis-url", server.url)
        assert done.returncode == 0, done.stderr
        assert "skipped a torn last record" in done.stderr
        got = stream_steps(redis.Redis.from_url(server.url), key)
        # every step it reported spooled, in order, none twice (one more may have made it)
        assert got[: last + 1] == list(range(last + 1))
        assert got == list(range(len(got)))
    assert list(tmp_path.iterdir()) == []  # all replayed: nothing left


def test_replay_fails_while_redis_is_down_and_keeps_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, EXECUTION, max_bytes=10**9)
    spool.append([("metricrelay:events", b'{"executionId": "exec-killed"}')])
    spool.close()
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli("spool", "replay", str(tmp_path), "--redis-url", url, "--timeout", "2")
    assert done.returncode == 1
    assert "cannot replay" in done.stderr
    assert len(list(tmp_path.glob("*.spool"))) == 1
