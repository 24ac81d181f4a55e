"""The ingest's bearer token (METRICRELAY_INGEST_TOKEN) on both API kinds, and the warning an
ingest gives when it listens beyond loopback without one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import requests
from tests.support.mlflow import ingest_process, stream_entries

from metricrelay.devtools.embedded import RedisServer
from metricrelay.producer.ingest_auth import is_loopback, warn_if_exposed

TOKEN = "ingest-token-0123456789"
BODY = orjson.dumps({"executionId": "run-token-1", "metrics": [{"name": "loss", "value": 1}]})


def _patch(url: str, authorization: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json", "AI-Resource-Group": "default"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.patch(f"{url}/v2/lm/metrics", data=BODY, headers=headers, timeout=20)


@pytest.mark.integration
def test_with_a_token_set_every_request_needs_it(
    private_redis: RedisServer,
    mlflow_env: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ingest_process(private_redis.url, METRICRELAY_INGEST_TOKEN=TOKEN) as ingest:
        # the AI API kind: the contract's error body
        for authorization in (None, "Bearer wrong-token", TOKEN, f"Basic {TOKEN}"):
            reply = _patch(ingest.url, authorization)
            assert reply.status_code == 401, authorization
            error = reply.json()["error"]
            assert set(error) == {"code", "message", "requestId", "target", "details"}
            assert "METRICRELAY_INGEST_TOKEN" in error["message"]
        assert _patch(ingest.url, f"Bearer {TOKEN}").status_code == 204
        # the MLflow kind: MLflow's error body, raised by the client as UNAUTHENTICATED
        mlflow = mlflow_env(ingest.url)
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        with pytest.raises(MlflowException, match=r"UNAUTHENTICATED: missing bearer token"):
            mlflow.start_run()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "wrong-token")
        with pytest.raises(MlflowException, match=r"UNAUTHENTICATED: wrong bearer token"):
            mlflow.start_run()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.5, step=1)
        artifacts = requests.put(f"{ingest.url}/api/2.0/mlflow-artifacts/artifacts/x", timeout=20)
        assert artifacts.status_code == 401
        assert artifacts.json()["error_code"] == "UNAUTHENTICATED"
        assert "without a token" not in ingest.log_text()
    executions = [entry["executionId"] for entry in stream_entries(private_redis.url)]
    assert executions == ["run-token-1", run.info.run_id, run.info.run_id]  # tags, metric


@pytest.mark.integration
def test_without_a_token_requests_need_none(
    private_redis: RedisServer, mlflow_env: Callable[[str], Any]
) -> None:
    with ingest_process(private_redis.url) as ingest:
        assert _patch(ingest.url, None).status_code == 204
        assert _patch(ingest.url, "Bearer anything").status_code == 204
        assert "without a token" not in ingest.log_text()  # it listens on loopback only


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "ingest.example.com"])
def test_listening_beyond_loopback_without_a_token_warns(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="metricrelay.producer.ingest_auth"):
        assert warn_if_exposed(host, None)
    assert "beyond loopback, without a token" in caplog.text
    assert "METRICRELAY_INGEST_TOKEN" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_or_a_token_gives_no_warning(host: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="metricrelay.producer.ingest_auth"):
        assert is_loopback(host)
        assert not warn_if_exposed(host, None)
        assert not warn_if_exposed("0.0.0.0", TOKEN)
    assert caplog.text == ""
