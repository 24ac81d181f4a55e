"""The unmodified MLflow client (mlflow-skinny) logging to AI Core through ``metricrelay ingest``.

Each test runs a private Redis, the reference API, the ingest as a process and, once the client
is done, a burst worker; then it reads back what the API stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import requests
from tests.support.mlflow import by_name, ingest_process, relay, stream_entries

from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration  # redis-server, the reference API, the ingest

KEYS = Keys()
MOMENT_MS = 1_795_435_200_123  # 2026-11-23T12:00:00.123Z


def test_the_mlflow_client_logs_metrics_params_and_tags_through_ingest(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
    mlflow_env: Callable[[str], Any],
) -> None:
    with ingest_process(private_redis.url) as ingest:
        mlflow = mlflow_env(ingest.url)
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        mlflow.set_experiment("relay-experiment")
        with mlflow.start_run(run_name="first-name") as run:
            run_id = run.info.run_id
            mlflow.log_metric("loss", 0.5, step=1, timestamp=MOMENT_MS)
            mlflow.log_metrics({"val/acc": 0.75, "learning rate": 0.01}, step=2)
            mlflow.log_param("lr", 0.1)
            mlflow.log_params({"batch_size": 8, "optimizer": "adam"})
            mlflow.set_tag("stage", "dev")
            mlflow.set_tag("mlflow.runName", "second-name")
            with pytest.raises(MlflowException, match=r"INVALID_PARAMETER_VALUE: .*finite"):
                mlflow.log_metric("loss", float("nan"), step=3)
            with pytest.raises(MlflowException, match=r"INVALID_PARAMETER_VALUE: .*'///'"):
                mlflow.log_metric("///", 1.0)
            with pytest.raises(
                MlflowException, match=r"INVALID_PARAMETER_VALUE: .*step must be between 0"
            ):
                mlflow.log_metric("loss", 1.0, step=-1)
            with pytest.raises(MlflowException, match=r"ENDPOINT_NOT_FOUND: .*does not serve"):
                mlflow.search_experiments()
            with pytest.raises(requests.HTTPError, match=r"NOT_IMPLEMENTED.*stores no artifacts"):
                mlflow.log_text("a note", "note.txt")
            with pytest.raises(MlflowException, match=r"NOT_IMPLEMENTED: .*cannot delete a tag"):
                mlflow.delete_tag("stage")
            got = mlflow.get_run(run_id)
            assert got.data.params == {"lr": "0.1", "batch_size": "8", "optimizer": "adam"}
        assert mlflow.get_run(run_id).info.status == "FINISHED"
        assert re.fullmatch(r"[0-9a-f]{32}", run_id)

    resource = relay(private_redis.url, api, start_worker, run_id)
    points = sorted((m["name"], m["step"], m["value"]) for m in resource["metrics"])
    assert points == [("learning rate", 2, 0.01), ("loss", 1, 0.5), ("val/acc", 2, 0.75)]
    stamps = {m["name"]: m["timestamp"] for m in resource["metrics"]}
    assert stamps["loss"] == "2026-11-23T12:00:00.123000Z"
    assert all(re.fullmatch(r"\d{4}-.*T.*\.\d{6}Z", stamp) for stamp in stamps.values())
    assert orjson.loads(by_name(resource, "customInfo")["parameters"]) == {
        "lr": "0.1",
        "batch_size": "8",
        "optimizer": "adam",
    }
    assert by_name(resource, "tags") == {
        "run_name": "second-name",
        "experiment": "relay-experiment",
        "stage": "dev",
    }


def test_the_run_id_is_the_execution_id_of_the_ingest(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
    mlflow_env: Callable[[str], Any],
) -> None:
    with ingest_process(private_redis.url, AICORE_EXECUTION_ID="e6663ea0593fe2b2") as ingest:
        mlflow = mlflow_env(ingest.url)
        with mlflow.start_run() as run:
            mlflow.log_metric("loss", 0.25, step=7)
        assert run.info.run_id == "e6663ea0593fe2b2"
    resource = relay(private_redis.url, api, start_worker, "e6663ea0593fe2b2")
    assert [(m["name"], m["step"]) for m in resource["metrics"]] == [("loss", 7)]
    assert by_name(resource, "tags") == {"experiment": "Default"}


def test_concurrent_param_writes_leave_the_whole_merged_object_last(
    private_redis: RedisServer,
    api: BackgroundServer,
    start_worker: Callable[..., Any],
    mlflow_env: Callable[[str], Any],
) -> None:
    """customInfo is last-write-wins at the API: whatever order 24 concurrent log-parameter
    calls arrive in, the last stream entry holds every param."""
    with ingest_process(private_redis.url) as ingest:
        mlflow = mlflow_env(ingest.url)
        run_id = mlflow.start_run().info.run_id
        url = f"{ingest.url}/api/2.0/mlflow/runs/log-parameter"

        def log(number: int) -> int:
            body = {"run_id": run_id, "key": f"p{number}", "value": str(number)}
            return requests.post(url, json=body, timeout=20).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(log, range(24))) == {200}
        mlflow.end_run()
    last = [entry for entry in stream_entries(private_redis.url) if "customInfo" in entry]
    assert len(last) == 24
    expected = {f"p{n}": str(n) for n in range(24)}
    assert orjson.loads(last[-1]["customInfo"][0]["value"]) == expected
    resource = relay(private_redis.url, api, start_worker, run_id)
    assert orjson.loads(by_name(resource, "customInfo")["parameters"]) == expected
