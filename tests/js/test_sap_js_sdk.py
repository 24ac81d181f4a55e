"""SAP's JavaScript SDK (``@sap-ai-sdk/ai-api``, ``MetricsApi``), unchanged, against metricrelay.

The SDK reads an AI Core service key from ``AICORE_SERVICE_KEY``, fetches an XSUAA token from
``url`` + ``/oauth/token`` and decodes it as a JWT (its token cache reads ``exp`` and ``zid``)
before it sends anything; it appends ``/v2`` to ``serviceurls.AI_API_URL`` when that has no
path, and sends ``AI-Resource-Group`` from the header parameters it is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tests.js.js_sdk import RunJs
from tests.support.reference_api import read_back

from metricrelay.api import ApiConfig
from metricrelay.api.server import BackgroundServer
from metricrelay.devtools import demo_stack
from metricrelay.devtools.demo_stack import DEMO_TOKEN, ChildProcess
from metricrelay.devtools.embedded import RedisServer

pytestmark = pytest.mark.integration  # the reference server, redis-server, ingest and a worker

CLIENT_ID = "sb-js-client!b1"
CLIENT_SECRET = "js-s3cret"
STAMP = "2026-11-23T12:00:{:02d}.000000Z"


def service_key(token_host: str, api_url: str, secret: str = CLIENT_SECRET) -> dict[str, Any]:
    """An AI Core service key as SAP's BTP cockpit hands it out."""
    return {
        "clientid": CLIENT_ID,
        "clientsecret": secret,
        "url": token_host,  # the SDK appends /oauth/token
        "identityzone": "metricrelay",
        "serviceurls": {"AI_API_URL": api_url},  # no path: the SDK appends /v2
    }


def resource(execution_id: str, steps: int, name: str = "Training Loss") -> dict[str, Any]:
    return {
        "executionId": execution_id,
        "metrics": [
            {
                "name": name,
                "value": 1.0 / (step + 1),
                "timestamp": STAMP.format(step),
                "step": step,
                "labels": [{"name": "rank", "value": str(step % 2)}],
            }
            for step in range(steps)
        ],
        "tags": [{"name": "sdk", "value": "js"}],
        "customInfo": [{"name": "Confusion Matrix", "value": '{"tp": 34}'}],
    }


def points(found: dict[str, Any]) -> dict[str, list[tuple[Any, ...]]]:
    """executionId → its metrics as (name, value, step, timestamp, labels) tuples."""
    return {
        res["executionId"]: [
            (m["name"], m["value"], m["step"], m["timestamp"], m["labels"]) for m in res["metrics"]
        ]
        for res in found["resources"]
    }


def expected(execution_id: str, steps: int) -> list[tuple[Any, ...]]:
    return [
        (m["name"], m["value"], m["step"], m["timestamp"], m["labels"])
        for m in resource(execution_id, steps)["metrics"]
    ]


@pytest.fixture
def api() -> Iterator[BackgroundServer]:
    """The reference server, with a client (OAuth, JWT) and a fixed token (for read_back)."""
    config = ApiConfig(
        port=0, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, static_token=DEMO_TOKEN
    )
    with BackgroundServer(config) as server:
        yield server


def stats(server: BackgroundServer) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(f"{server.url}/_stats", timeout=10).json()
    return answer


def test_patch_and_find_against_the_reference_server(run_js: RunJs, api: BackgroundServer) -> None:
    plan = {
        "group": "team-js",
        "patches": [resource("exec-js-0001", 3), resource("exec-js-0002", 2)],
        "find": ["exec-js-0001", "exec-js-0002"],
    }
    result = run_js(service_key(api.url, api.url), plan)
    assert result.returncode == 0, result.output
    assert result.output["patched"] == 2
    found = result.output["found"]
    assert found["count"] == 2
    assert points(found) == {
        "exec-js-0001": expected("exec-js-0001", 3),
        "exec-js-0002": expected("exec-js-0002", 2),
    }
    first = found["resources"][0]
    assert first["tags"] == [{"name": "sdk", "value": "js"}]
    assert first["customInfo"] == [{"name": "Confusion Matrix", "value": '{"tp": 34}'}]
    seen = stats(api)["requests"]
    assert seen["POST /oauth/token"] == 1  # the SDK decoded the JWT and cached it
    assert seen["PATCH /v2/lm/metrics"] == 2 and seen["GET /v2/lm/metrics"] == 1
    # stored under the resource group the SDK sent, not "default"
    assert len(read_back(api, "exec-js-0001", group="team-js")["metrics"]) == 3
    assert read_back(api, "exec-js-0001")["metrics"] == []


def test_a_wrong_secret_is_refused_and_nothing_is_stored(
    run_js: RunJs, api: BackgroundServer
) -> None:
    plan = {"patches": [resource("exec-js-0003", 1)]}
    result = run_js(service_key(api.url, api.url, secret="wrong"), plan)
    assert result.returncode == 1
    assert "Could not fetch client credentials token" in result.output["error"]
    assert read_back(api, "exec-js-0003")["metrics"] == []
    assert "PATCH /v2/lm/metrics" not in stats(api)["requests"]


def _clean_env() -> dict[str, str]:
    """This process's environment without any METRICRELAY_* or AICORE_* setting."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METRICRELAY_", "AICORE_"))
    }


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A private redis-server and ``metricrelay ingest`` (no ingest token) in front of it."""
    with RedisServer() as redis_server:
        argv = ["ingest", "--port", "0", "--redis-url", redis_server.url]
        child = ChildProcess("ingest", argv, tmp_path / "ingest.log", _clean_env())
        try:
            yield redis_server, child.bound_url()
        finally:
            child.stop()


def test_patch_through_ingest_delivered_by_a_worker(
    run_js: RunJs, api: BackgroundServer, ingest: tuple[RedisServer, str], tmp_path: Path
) -> None:
    redis_server, ingest_url = ingest
    # The token comes from the reference server; the PATCHes go to the ingest.
    through_ingest = service_key(api.url, ingest_url)
    plan = {"patches": [resource("exec-js-0004", 4), resource("exec-js-0005", 1)]}
    sent = run_js(through_ingest, plan)
    assert sent.returncode == 0, sent.output
    assert sent.output["patched"] == 2
    assert read_back(api, "exec-js-0004")["metrics"] == []  # only queued so far

    # The worker fetches its own JWT with the client's credentials (relay/auth.py).
    worker = demo_stack.start_worker(
        tmp_path,
        1,
        redis_server.url,
        api.url,
        burst=True,
        METRICRELAY_TOKEN="",
        METRICRELAY_AUTH_URL=api.auth_url,
        METRICRELAY_CLIENT_ID=CLIENT_ID,
        METRICRELAY_CLIENT_SECRET=CLIENT_SECRET,
        METRICRELAY_LINGER="0.05",
        METRICRELAY_BLOCK_MS="50",
    )
    try:
        assert worker.process.wait(timeout=60) == 0, worker.log_text()
    finally:
        worker.stop()

    back = run_js(service_key(api.url, api.url), {"find": ["exec-js-0004", "exec-js-0005"]})
    assert back.returncode == 0, back.output
    assert points(back.output["found"]) == {
        "exec-js-0004": expected("exec-js-0004", 4),
        "exec-js-0005": expected("exec-js-0005", 1),
    }
    assert back.output["found"]["resources"][0]["tags"] == [{"name": "sdk", "value": "js"}]
    assert stats(api)["requests"]["POST /oauth/token"] == 3  # two SDK runs and the worker
