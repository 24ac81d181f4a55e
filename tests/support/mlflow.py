"""The MLflow side of the ingest tests: ``metricrelay ingest`` as a process, the MLflow client
pointed at it, and reading back what it wrote to the stream and what the API stored."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
from tests.support.reference_api import read_back

from metricrelay.api.server import BackgroundServer
from metricrelay.keys import Keys

__all__ = ["Ingest", "by_name", "ingest_process", "point_mlflow", "relay", "stream_entries"]

KEYS = Keys()


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


def point_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
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
