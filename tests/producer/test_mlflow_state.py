"""What ingest's MLflow API remembers of a run stays in step with what it wrote, and what the
AI API cannot take is refused with 400 (never a 500 the client would retry for minutes).

The in-process tests run the ingest app on a TestServer over a real Redis (``redis_client``);
the client-driven test starts ``metricrelay ingest`` as a process and uses the real MLflow
client, as test_mlflow_ingest.py does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import redis.asyncio as redis_asyncio
from aiohttp.test_utils import TestServer
from redis.exceptions import ConnectionError as RedisConnectionError
from tests.support.mlflow import ingest_process, stream_entries

from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.producer.ingest import IngestConfig, build_ingest_app

pytestmark = pytest.mark.integration  # a real redis-server

KEYS = Keys()
MLFLOW = "/api/2.0/mlflow"


async def _entries(client: redis_asyncio.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"resource"]) for _, fields in await client.xrange(KEYS.events)]


def _params_written(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [orjson.loads(e["customInfo"][0]["value"]) for e in entries if "customInfo" in e]


def _run_names_written(entries: list[dict[str, Any]]) -> list[str]:
    return [t["value"] for e in entries for t in e.get("tags", []) if t["name"] == "run_name"]


@pytest.fixture
async def ingest_url(redis_client: redis_asyncio.Redis) -> AsyncIterator[Callable[..., Any]]:
    """``start(**config)``: the ingest app on a free port over the test's Redis; its base URL."""
    servers: list[TestServer] = []

    async def start(**config: Any) -> str:
        app = build_ingest_app(redis_client, IngestConfig(KEYS, **config))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=data, headers=headers) as reply:
        return reply.status, await reply.json(content_type=None)


# --------------------------------------------------------------------------- runs/update


async def test_a_run_name_refused_by_a_redis_outage_is_written_when_the_client_retries(
    redis_client: redis_asyncio.Redis,
    ingest_url: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rename whose XADD failed (503, which the MLflow client retries by itself) is not
    remembered: the retry writes it (the name was once kept before the write, and the retry
    answered 200 without writing)."""
    base = await ingest_url()
    async with aiohttp.ClientSession() as session:
        status, created = await _post(
            session, f"{base}{MLFLOW}/runs/create", {"experiment_id": "0", "run_name": "first"}
        )
        assert status == 200
        run_id = created["run"]["info"]["run_id"]

        real_xadd = redis_client.xadd
        outage = {"left": 1}

        async def flaky_xadd(*args: Any, **kwargs: Any) -> Any:
            if outage["left"]:
                outage["left"] -= 1
                raise RedisConnectionError("Redis is restarting")
            return await real_xadd(*args, **kwargs)

        monkeypatch.setattr(redis_client, "xadd", flaky_xadd)
        update = {"run_id": run_id, "run_name": "renamed"}
        status, error = await _post(session, f"{base}{MLFLOW}/runs/update", update)
        assert (status, error["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
        status, _ = await _post(session, f"{base}{MLFLOW}/runs/update", update)  # the retry
        assert status == 200
    assert _run_names_written(await _entries(redis_client)) == ["first", "renamed"]


# --------------------------------------------------------------------------- params race


async def test_params_logged_while_a_run_is_created_on_the_same_execution_are_kept(
    redis_client: redis_asyncio.Redis,
    ingest_url: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runs of a fixed execution id share one params object: a params write in flight
    while another run is created on that id (a nested ``start_run`` while the parent's
    async ``log_params`` is sent) reaches the new run too, so the next ``parameters`` object
    (the one AI Core keeps) holds it."""
    execution = "exec-review-race"
    base = await ingest_url(execution_id=execution)
    real_xadd = redis_client.xadd
    entered, release = asyncio.Event(), asyncio.Event()
    hold = {"next": False}

    async def gated_xadd(*args: Any, **kwargs: Any) -> Any:
        if hold["next"]:
            hold["next"] = False
            entered.set()
            await release.wait()
        return await real_xadd(*args, **kwargs)

    monkeypatch.setattr(redis_client, "xadd", gated_xadd)
    async with aiohttp.ClientSession() as session:
        status, _ = await _post(session, f"{base}{MLFLOW}/runs/create", {"experiment_id": "0"})
        assert status == 200
        hold["next"] = True  # the first param's XADD takes a while
        first = asyncio.create_task(
            _post(session, f"{base}{MLFLOW}/runs/log-parameter",
                  {"run_id": execution, "key": "lr", "value": "0.1"})
        )  # fmt: skip
        await asyncio.wait_for(entered.wait(), 10)
        nested = asyncio.create_task(
            _post(session, f"{base}{MLFLOW}/runs/create",
                  {"experiment_id": "0", "run_name": "child",
                   "tags": [{"key": "mlflow.parentRunId", "value": execution}]})
        )  # fmt: skip
        await asyncio.sleep(0.3)  # runs/create has registered the new run and waits for the lock
        release.set()
        assert (await first)[0] == 200
        assert (await nested)[0] == 200
        status, _ = await _post(
            session,
            f"{base}{MLFLOW}/runs/log-parameter",
            {"run_id": execution, "key": "batch_size", "value": "8"},
        )
        assert status == 200
    written = _params_written(await _entries(redis_client))
    assert written[-1] == {"lr": "0.1", "batch_size": "8"}  # the one AI Core keeps


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("path", ["/runs/log-metric", "/runs/log-parameter", "/runs/set-tag"])
async def test_a_key_with_a_lone_surrogate_is_refused_with_400_not_a_retried_500(
    redis_client: redis_asyncio.Redis, ingest_url: Callable[..., Any], path: str
) -> None:
    """``"loss\\udc80"`` (a key decoded with surrogateescape, escaped by Python's json) is no
    text the API takes: INVALID_PARAMETER_VALUE at once, not a 500 the client retries."""
    base = await ingest_url()
    async with aiohttp.ClientSession() as session:
        status, created = await _post(session, f"{base}{MLFLOW}/runs/create", {})
        run_id = created["run"]["info"]["run_id"]
        raw = (
            b'{"run_id": "%s", "key": "loss\\udc80", "value": 1.0, "timestamp": 1795435200123,'
            b' "step": 0}' % run_id.encode()
        )
        if path != "/runs/log-metric":
            raw = b'{"run_id": "%s", "key": "loss\\udc80", "value": "1"}' % run_id.encode()
        status, error = await _post(session, f"{base}{MLFLOW}{path}", raw)
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


async def test_an_authorization_header_that_is_not_utf8_gets_401_not_500(
    redis_client: redis_asyncio.Redis, ingest_url: Callable[..., Any]
) -> None:
    """A latin-1 byte in the header (aiohttp decodes it to a lone surrogate) is a wrong
    token, not a bare 500."""
    base = await ingest_url(token="review-token-0123456789")
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /api/2.0/mlflow/experiments/get?experiment_id=0 HTTP/1.1\r\n"
        b"Host: " + host.encode() + b"\r\nAuthorization: Bearer caf\xe9\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"401", answer[:300]


# --------------------------------------------------------------------------- real client


def test_a_run_renamed_through_set_tags_keeps_mlflow_and_ai_core_in_step(
    redis_server: RedisServer, mlflow_env: Callable[[str], Any]
) -> None:
    """``mlflow.set_tags({"mlflow.runName": ...})`` goes through log-batch, and renames the run
    as set-tag does (MLflow's stores do for both): get_run shows the new name, and renaming
    it back with runs/update is written, so AI Core's ``run_name`` is what MLflow reports."""
    redis.Redis.from_url(redis_server.url).flushdb()
    with ingest_process(redis_server.url) as ingest:
        mlflow = mlflow_env(ingest.url)
        with mlflow.start_run(run_name="first") as run:
            run_id = run.info.run_id
            mlflow.set_tags({"mlflow.runName": "second", "stage": "dev"})
            shown = mlflow.get_run(run_id).info.run_name
            mlflow.MlflowClient().update_run(run_id, name="first")
    names = _run_names_written(stream_entries(redis_server.url))
    assert (shown, names[-1]) == ("second", "first"), names


# --------------------------------------------------------------------------- NaN and infinity


def _metric_names_written(entries: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(m["name"], m["step"]) for e in entries for m in e.get("metrics", [])]


async def test_a_non_finite_metric_is_refused_by_default_with_the_way_out(
    redis_client: redis_asyncio.Redis, ingest_url: Callable[..., Any]
) -> None:
    """By default a NaN is refused (the AI API cannot store it), and the message names the
    option that drops such values instead; nothing of the call is written."""
    base = await ingest_url()
    async with aiohttp.ClientSession() as session:
        _, created = await _post(session, f"{base}{MLFLOW}/runs/create", {})
        run_id = created["run"]["info"]["run_id"]
        batch = {
            "run_id": run_id,
            "metrics": [
                {"key": "loss", "value": "NaN", "timestamp": 1795435200123, "step": 1},
                {"key": "lr", "value": 0.1, "timestamp": 1795435200123, "step": 1},
            ],
        }
        status, error = await _post(session, f"{base}{MLFLOW}/runs/log-batch", batch)
    assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert "metrics[0] 'loss'" in error["message"]
    assert "--mlflow-non-finite drop" in error["message"]
    assert _metric_names_written(await _entries(redis_client)) == []


async def test_drop_mode_leaves_out_nan_and_infinity_and_keeps_the_rest(
    redis_client: redis_asyncio.Redis,
    ingest_url: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``--mlflow-non-finite drop``: a NaN loss (or an fp16 step's infinite grad norm) is left
    out, said once per run and name; the finite metrics of the same call are written, and a
    bad name is still refused."""
    caplog.set_level(logging.WARNING, logger="metricrelay.producer")
    base = await ingest_url(drop_non_finite=True)
    async with aiohttp.ClientSession() as session:
        _, created = await _post(session, f"{base}{MLFLOW}/runs/create", {})
        run_id = created["run"]["info"]["run_id"]
        for step, bad in enumerate(("NaN", "Infinity", "-Infinity"), start=1):
            batch = {
                "run_id": run_id,
                "metrics": [
                    {"key": "grad_norm", "value": bad, "timestamp": 1795435200123, "step": step},
                    {"key": "lr", "value": 0.1, "timestamp": 1795435200123, "step": step},
                ],
            }
            status, _ = await _post(session, f"{base}{MLFLOW}/runs/log-batch", batch)
            assert status == 200
        single = {"run_id": run_id, "key": "loss", "value": "NaN", "timestamp": 1, "step": 4}
        status, _ = await _post(session, f"{base}{MLFLOW}/runs/log-metric", single)
        assert status == 200
        bad_name = {"run_id": run_id, "key": "///", "value": "NaN", "timestamp": 1, "step": 5}
        status, error = await _post(session, f"{base}{MLFLOW}/runs/log-metric", bad_name)
        assert (status, error["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert _metric_names_written(await _entries(redis_client)) == [("lr", 1), ("lr", 2), ("lr", 3)]
    said = [r.getMessage() for r in caplog.records if "not a finite number" in r.getMessage()]
    assert len(said) == 2 and "'grad_norm'" in said[0] and "'loss'" in said[1], said


def test_the_mlflow_client_keeps_training_through_a_nan_in_drop_mode(
    redis_server: RedisServer, mlflow_env: Callable[[str], Any]
) -> None:
    """The real client, as Lightning's MLFlowLogger calls it (synchronous log_batch): with
    ``--mlflow-non-finite drop`` a NaN loss raises nothing and the step's other metrics
    arrive; by default the same call raises MlflowException."""
    redis.Redis.from_url(redis_server.url).flushdb()
    with ingest_process(redis_server.url, "--mlflow-non-finite", "drop") as ingest:
        mlflow = mlflow_env(ingest.url)
        with mlflow.start_run():
            mlflow.log_metrics({"loss": float("nan"), "lr": 0.1}, step=7)
            mlflow.log_metrics({"loss": 0.5, "lr": 0.1}, step=8)
        assert "'loss' is not a finite number" in ingest.log_text()
    written = _metric_names_written(stream_entries(redis_server.url))
    assert written == [("lr", 7), ("loss", 8), ("lr", 8)]
    with ingest_process(redis_server.url) as ingest:
        mlflow = mlflow_env(ingest.url)
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        with mlflow.start_run(), pytest.raises(MlflowException, match="non-finite drop"):
            mlflow.log_metrics({"loss": float("nan"), "lr": 0.1}, step=9)
