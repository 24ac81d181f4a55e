"""The unmodified MLflow client (mlflow-skinny) logging to AI Core through ``metricrelay ingest``.

Each test runs a private Redis, the reference API, the ingest as a process and, once the client
is done, a burst worker; then it reads back what the API stored.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
import requests
from tests.support.reference_api import read_back

from metricrelay.api.server import BackgroundServer
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

pytestmark = pytest.mark.integration  # redis-server, the reference API, the ingest

KEYS = Keys()
MOMENT_MS = 1_795_435_200_123  # 2026-11-23T12:00:00.123Z


@dataclass
class Ingest:
    url: str
    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def ingest_process(redis_url: str, *flags: str, **env: str) -> Iterator[Ingest]:
    """``metricrelay ingest`` on a free port with ``env`` added; its log is kept in ``lines``
    (read by a thread, so that the pipe never fills)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "metricrelay", "ingest", "--port", "0", "--redis-url", redis_url,
         *flags],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**clean, **env},
    )  # fmt: skip
    assert process.stderr is not None
    ingest = Ingest("", process)
    for raw in process.stderr:  # bounded: the process logs its URL at start or exits
        ingest.lines.append(raw.decode())
        found = re.search(r"listening on (http://\S+)", ingest.lines[-1])
        if found:
            ingest.url = found.group(1)
            break
    assert ingest.url, f"ingest did not start: {ingest.log_text()}"
    stream = process.stderr
    reader = threading.Thread(
        target=lambda: ingest.lines.extend(line.decode() for line in stream), daemon=True
    )
    reader.start()
    try:
        yield ingest
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, ingest.log_text()
        reader.join(timeout=10)


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    """``point(url)``: the MLflow client logs to ``url``, with no retries (a refusal is final
    and must show at once) and no run left active from an earlier test."""
    import mlflow  # noqa: PLC0415
    import mlflow.tracking.fluent  # noqa: PLC0415

    # The client remembers the experiment an earlier test set (set_experiment also exports
    # it); this ingest has never seen it.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    def point(url: str) -> Any:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        return mlflow

    yield point
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None: back to the default
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def relay(
    redis_url: str, api: BackgroundServer, start_worker: Callable[..., Any], execution: str
) -> dict[str, Any]:
    """Run a burst worker over the stream; the execution's resource as the API stores it.
    Nothing may have been dead-lettered: the ingest refused every bad point at the call."""
    worker = start_worker(redis_url, api, burst=True)
    assert worker.process.wait(timeout=60) == 0, worker.log_text()
    dead = redis.Redis.from_url(redis_url).xrange(KEYS.dead)
    assert dead == [], dead
    return read_back(api, execution)


def stream_entries(redis_url: str) -> list[dict[str, Any]]:
    """The fragments in the (unsharded) event stream, in stream order."""
    entries = redis.Redis.from_url(redis_url).xrange(KEYS.events) or []
    return [orjson.loads(fields[b"resource"]) for _, fields in entries if fields]


def by_name(resource: dict[str, Any], section: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in resource[section]}


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
