"""Chaos against real processes; the ledger balances after each (issue 9, scenarios 1-5)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any

import orjson
import pytest
import redis
from tests.support.waiting import until_sync

from metricrelay import Emitter
from metricrelay.devtools.demo_stack import QUICK_WORKER_ENV
from metricrelay.devtools.embedded import free_port

pytestmark = pytest.mark.integration  # a real redis-server, the reference API, worker processes

KEYS_DEAD = "metricrelay:dead"
KEYS_EVENTS = "metricrelay:events"
SCALE = int(os.environ.get("METRICRELAY_CHAOS_SCALE", "1"))  # make chaos: 10
# Seconds, not minutes, per run; a lease of 3 s (the default is 10): a SIGKILLed owner of the
# one stream is replaced by a standby within seconds (the fault harness runs with 2).
QUICK = {**QUICK_WORKER_ENV, "METRICRELAY_LEASE_TTL": "3"}


def burst(stack: Any, timeout: float = 180, **env: str) -> None:
    """A last worker in burst mode: it reclaims what crashed workers left and drains the rest."""
    worker = stack.start_worker(99, burst=True, **{**QUICK, **env})
    worker.process.wait(timeout)
    assert worker.process.returncode == 0, worker.log_path.read_text()[-3000:]


def server_stats(stack: Any) -> dict[str, Any]:
    import json  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"{stack.api_url}/_stats", timeout=30) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


def entry_id(raw: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = raw.decode().partition("-")
    return int(milliseconds), int(sequence)


def last_written(client: redis.Redis) -> tuple[int, int]:
    """The id of the last entry ever added to the event stream, (0, 0) before the first."""
    if not client.exists(KEYS_EVENTS):
        return (0, 0)
    return entry_id(client.xinfo_stream(KEYS_EVENTS)["last-generated-id"])


def read_past(client: redis.Redis, before: tuple[int, int]) -> bool:
    """Whether the workers' group has read an entry added after the one ``before`` names."""
    groups = client.xinfo_groups(KEYS_EVENTS) if client.exists(KEYS_EVENTS) else []
    return bool(groups) and entry_id(groups[0]["last-delivered-id"]) > before


def test_workers_killed_at_random_lose_nothing(stack: Any, rng: random.Random) -> None:
    stack.start_api()
    stack.worker_env = QUICK
    workers = {n: stack.start_worker(n) for n in (1, 2, 3)}
    executions = [f"crash-{i:02d}" for i in range(10)]
    # a kill a round: six in `make test` (the suite's ten-minute budget), ten in `make chaos`
    per_execution, rounds = 2000 * SCALE, 6 if SCALE == 1 else 10
    written: set[Any] = set()
    kills = 0
    client = stack.client()
    for number in range(rounds):
        part = range(number * per_execution // rounds, (number + 1) * per_execution // rounds)
        before = last_written(client)
        for execution in executions:
            written |= stack.xadd_points(execution, part, per_entry=rng.choice([1, 10, 200]))
        # the kill must land mid-work: once the workers have read some of this round
        until_sync(lambda: read_past(client, before), timeout=60)  # noqa: B023 - called here
        victim = rng.choice(list(workers))
        workers[victim].kill()
        kills += 1
        workers[victim] = stack.start_worker(victim)
    for worker in workers.values():
        worker.stop()
    burst(stack)
    audit = stack.audit(written, executions)
    audit.assert_balanced()
    assert audit.dead == {}
    stats = server_stats(stack)
    assert "413" not in stats["responses"] and "400" not in stats["responses"]  # no limit broken
    duplicates = stats["storage"]["points_duplicate"]
    print(f"{len(written)} points, {kills} SIGKILLs: {duplicates} points delivered twice")


def test_redis_restarted_mid_run_with_aof_always_loses_nothing(stack: Any) -> None:
    stack.start_api()
    stack.worker_env = QUICK
    for number in (1, 2):
        stack.start_worker(number)
    written = set()
    with Emitter(
        "restart-01", redis_url=stack.redis.url, flush_interval=0.02, handle_sigterm=False
    ) as run:
        for step in range(4000 * SCALE):
            run.log_metric("loss", 1.0, step=step, labels={"rank": "0"})
            point = {"name": "loss", "step": step, "labels": [{"name": "rank", "value": "0"}]}
            written.add(stack.identity("restart-01", point))
            if step == 2000 * SCALE:
                stack.redis.restart()  # both the producer and the workers lose their connections
        run.flush(timeout=120, wait_delivered=True)
    for worker in stack.workers:
        worker.stop()
    burst(stack)
    audit = stack.audit(written, ["restart-01"])
    audit.assert_balanced()
    assert audit.dead == {}
    assert "413" not in server_stats(stack)["responses"]  # no PATCH broke a limit


def test_api_faults_every_dead_letter_has_the_reason_its_fault_implies(
    stack: Any, rng: random.Random
) -> None:
    stack.api_args = (
        *("--fail-rate", "0.05", "--throttle-rate", "0.05", "--retry-after", "1"),
        *("--reset-rate", "0.03", "--max-metrics-per-request", "300"),
        *("--max-body-bytes", "65536", "--reject-names", "^poison", "--seed", "3"),
        *("--expires-in", "2", "--client-id", "relay", "--client-secret", "s3cr3t-relay"),
    )
    url = stack.start_api()
    stack.worker_env = {
        **QUICK,
        "METRICRELAY_RETRY_BUDGET": "30",
        "METRICRELAY_TOKEN": "",
        "METRICRELAY_AUTH_URL": f"{url}/oauth/token",
        "METRICRELAY_CLIENT_ID": "relay",
        "METRICRELAY_CLIENT_SECRET": "s3cr3t-relay",
    }
    for number in (1, 2):
        stack.start_worker(number)
    executions = [f"faults-{i}" for i in range(4)]
    written: set[Any] = set()
    for execution in executions:  # long labels: 300 metrics then exceed 64 KiB (413 by bytes)
        written |= stack.xadd_points(execution, range(3000 * SCALE), per_entry=rng.choice([5, 500]))
    poison = stack.xadd_points(executions[0], range(100_000, 100_010), per_entry=1, name="poison_x")
    written |= poison
    for worker in stack.workers:
        worker.stop(timeout=60)
    burst(stack, **stack.worker_env)
    audit = stack.audit(written, executions)
    audit.assert_balanced()
    assert audit.dead == dict.fromkeys(poison, "rejected")  # only the refused names
    responses = server_stats(stack)["responses"]
    for status in ("503", "429", "413", "400", "reset"):
        assert int(responses.get(status, 0)) > 0, (status, responses)
    for worker in stack.workers:
        assert "s3cr3t-relay" not in worker.log_path.read_text()


def test_api_down_longer_than_the_budget_then_replay_delivers_everything(stack: Any) -> None:
    stack.api_url = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    stack.worker_env = {**QUICK, "METRICRELAY_RETRY_BUDGET": "1"}
    written = stack.xadd_points("down-01", range(3000), per_entry=100)
    burst(stack, **stack.worker_env)
    exhausted = stack.audit(written, [])
    assert set(exhausted.dead.values()) == {"exhausted"} and len(exhausted.dead) == 3000
    stack.start_api()  # the API is back
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricrelay",
            "replay",
            "--redis-url",
            stack.redis.url,
            "--reason",
            "exhausted",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    burst(stack)
    audit = stack.audit(written, ["down-01"])
    audit.assert_balanced()
    assert audit.dead == {}
    assert stack.client().xlen(KEYS_DEAD) == 0  # zero dead letters left


HOSTILE: list[bytes] = [
    b"\xff\xfe\xfd",  # invalid UTF-8
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting
    b'{"executionId":"fuzz-01","metrics":[{"name":"x","value":1e999999}]}',  # huge number
    orjson.dumps(
        {"executionId": "fuzz-01", "customInfo": [{"name": "big", "value": "x" * 10_000_000}]}
    ),
    orjson.dumps({"executionId": 5, "metrics": "nope"}),  # wrong types
    b'{"metrics":[{"name":"x","value":1}]}',  # missing executionId
    b"{}",
    b"",
    bytes(range(256)),  # binary
    orjson.dumps(
        {"executionId": "fuzz-01", "metrics": [{"name": "x", "value": True, "extra": {"a": [1]}}]}
    ),
]


def test_hostile_entries_are_dead_lettered_and_valid_traffic_is_unaffected(
    stack: Any, rng: random.Random
) -> None:
    from hypothesis import given, settings  # noqa: PLC0415
    from hypothesis import strategies as st  # noqa: PLC0415

    generated: list[bytes] = []

    @settings(max_examples=60, database=None, derandomize=True)
    @given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
    def collect(raw: bytes) -> None:
        generated.append(raw)

    collect()
    stack.start_api()
    client = stack.client()
    written: set[Any] = set()
    hostile_ids = []
    for number, raw in enumerate([*HOSTILE, *generated]):
        written |= stack.xadd_points(
            "fuzz-valid", range(number * 10, number * 10 + 10), per_entry=10
        )
        hostile_ids.append(client.xadd("metricrelay:events", {"resource": raw}).decode())
    burst(stack)
    audit = stack.audit(written, ["fuzz-valid"])
    audit.assert_balanced()  # valid traffic all stored, nothing pending
    letters = client.xrange(KEYS_DEAD)
    sources = {s for _, f in letters for s in f[b"source_ids"].decode().split(",")}
    valid_json = {
        i for i, raw in zip(hostile_ids, [*HOSTILE, *generated], strict=True) if _valid(raw)
    }
    assert set(hostile_ids) - valid_json <= sources  # every hostile entry is dead-lettered
    for _, fields in letters:
        assert fields[b"reason"] == b"invalid"
        assert fields[b"error"].strip()  # with a readable error
    del rng


def _valid(raw: bytes) -> bool:
    """Whether a generated entry happens to be a valid, empty-enough fragment (then no letter)."""
    from metricrelay.codec import decode_entry  # noqa: PLC0415

    return not decode_entry(raw, entry_ms=0, default_resource_group="d").problems
