"""--log-format json: one JSON object per line, with the batch facts as fields, no secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as redis_asyncio
from tests.support.waiting import until

from metricrelay.api import ApiConfig
from metricrelay.api.server import start_server
from metricrelay.devtools.demo_stack import start_worker
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.logs import JsonFormatter

KEYS = Keys()
TOKEN = "tok-that-must-never-be-logged"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    env.update(extra)
    return env


async def run_cli(env: dict[str, str], *argv: str) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "metricrelay", *argv,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


def test_a_record_becomes_one_json_object_with_its_extra_fields() -> None:
    record = logging.LogRecord(
        "metricrelay.x", logging.WARNING, __file__, 1, "%d points", (3,), None
    )
    record.__dict__.update(execution_id="exec-1", statuses={204: 2}, where=Path("/tmp/x"))
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line  # the traceback too stays on the one line
    document = orjson.loads(line)
    assert document["level"] == "WARNING" and document["logger"] == "metricrelay.x"
    assert document["message"] == "3 points"
    assert document["execution_id"] == "exec-1" and document["statuses"] == {"204": 2}
    assert document["where"] == "/tmp/x"  # not a JSON type: logged as its str
    assert "ValueError: boom" in document["exception"]
    assert datetime.fromisoformat(document["time"]).tzinfo == UTC
    assert document["time"].endswith("Z")
    assert "args" not in document and "msg" not in document


@pytest.mark.integration  # a real redis-server, the reference server, a worker process
async def test_the_worker_logs_json_lines_with_batch_fields_and_no_token(
    redis_server: RedisServer, redis_client: redis_asyncio.Redis, tmp_path: Path
) -> None:
    for execution in ("exec-1", "exec-2"):
        metrics = [{"name": "loss", "value": 0.5, "step": s} for s in range(4)]
        await redis_client.xadd(
            KEYS.events,
            {"resource": orjson.dumps({"executionId": execution, "metrics": metrics})},
        )
    await redis_client.xadd(KEYS.events, {"resource": b"{broken"})
    api = await start_server(ApiConfig(port=0, static_token=TOKEN))
    worker = start_worker(
        tmp_path,
        1,
        redis_server.url,
        api.url,
        burst=True,
        args=("--log-format", "json", "--log-level", "DEBUG"),
        METRICRELAY_TOKEN=TOKEN,
        METRICRELAY_LINGER="0.05",
        METRICRELAY_BLOCK_MS="50",
    )
    try:  # the API runs on this event loop: wait without blocking it
        await until(lambda: worker.process.poll() is not None, timeout=120)
    finally:
        await api.close()
        code = worker.stop()
    lines = worker.log_text().splitlines()  # its stdout and stderr
    assert code == 0, lines
    documents = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert documents and all({"time", "level", "logger", "message"} <= set(d) for d in documents)
    batches = [d for d in documents if d["logger"] == "metricrelay.relay.worker" and "points" in d]
    assert sorted((d["execution_id"], d["points"], d["dead"]) for d in batches) == [
        ("exec-1", 4, 0),
        ("exec-2", 4, 0),
    ]
    assert all(isinstance(d["ms"], float) and d["requests"] == 1 for d in batches)
    assert not any(TOKEN in line for line in lines)


async def test_the_environment_variable_chooses_json_too() -> None:
    code, lines = await run_cli(clean_env(METRICRELAY_LOG_FORMAT="json"), "worker")
    assert code == 2  # no API configured
    [document] = [orjson.loads(line) for line in lines]
    assert document["level"] == "ERROR" and document["message"].startswith("configuration:")
    code, lines = await run_cli(clean_env(METRICRELAY_LOG_FORMAT="yaml"), "worker")
    assert code == 2 and "METRICRELAY_LOG_FORMAT" in lines[-1]
