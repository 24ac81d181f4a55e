"""Producers and the worker agree on what is valid (no Redis needed).

Promises checked here: what the Emitter or ``metricrelay ingest`` accepts at the call is never
lost nor dead-lettered ``invalid`` later, and the worker's fast (msgspec) and pydantic paths
take or refuse the same entries.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests.support.spool_fakes import FlakyRedis

from metricrelay.codec import decode_entry
from metricrelay.keys import Keys
from metricrelay.models import MAX_CUSTOM_INFO_BYTES
from metricrelay.producer import compat
from metricrelay.producer import emitter as emitter_module
from metricrelay.producer.emitter import Emitter, PointError
from metricrelay.producer.ingest import IngestConfig, build_ingest_app
from metricrelay.relay.batching import Coalescer
from metricrelay.relay.intake import decode
from metricrelay.relay.stream import Entry
from metricrelay.wholeentry import SCAN

GROUP = "default"


def worker_intake(raw: bytes) -> tuple[list[bytes], list[str]]:
    """What the worker's intake (relay/worker.py ``ingest``) makes of one stream entry: the
    bodies it would send and the reasons of the items it would dead-letter ``invalid``."""
    coalescer = Coalescer()
    entry = Entry("1700000000000-0", raw, len(raw))
    invalid: list[str] = []
    plain = None if SCAN is None else SCAN(raw)
    if plain is not None:
        coalescer.add_run(entry.id, (plain[0] or GROUP, plain[1]), plain[2], plain[3], 0.0)
    else:
        fragment, letters = decode(entry, GROUP)
        invalid += [letter.error for letter in letters]
        if fragment is not None:
            coalescer.add(entry.id, fragment, 0.0)
            invalid += [rejected.reason for rejected in coalescer.take_rejected()]
    return [body.encode() for body in coalescer.flush()], invalid


def pydantic_path(raw: bytes) -> tuple[list[bytes], list[str]]:
    """The same entry judged by codec.py's pydantic path alone (no fast path)."""
    decoded = decode_entry(raw, entry_ms=1_700_000_000_000, default_resource_group=GROUP)
    invalid = [problem.message for problem in decoded.problems]
    coalescer = Coalescer()
    if decoded.fragment is not None:
        coalescer.add("1700000000000-0", decoded.fragment, 0.0)
        invalid += [rejected.reason for rejected in coalescer.take_rejected()]
    return [body.encode() for body in coalescer.flush()], invalid


# --------------------------------------------------------------------------- the Emitter


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> FlakyRedis:
    """The Emitter's synchronous client replaced by an in-memory one (pipelined XADDs)."""
    fake = FlakyRedis()
    monkeypatch.setattr(emitter_module, "sync_client", lambda *args, **kwargs: fake)
    return fake


@pytest.fixture
def run(fake_redis: FlakyRedis, tmp_path: Path) -> Iterator[Emitter]:
    emitter = Emitter(
        "exec-parity-1",
        redis_url="redis://127.0.0.1:1/0",  # never used: the fake above takes the writes
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.02,
        handle_sigterm=False,
    )
    yield emitter
    emitter.close(timeout=1)


def _points(fake: FlakyRedis) -> list[tuple[str, Any]]:
    return [
        (metric["name"], metric.get("step"))
        for data in fake.entries
        for metric in orjson.loads(data).get("metrics", [])
    ]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"name": "loss\udcff"}, id="metric-name"),  # e.g. os.fsdecode of a path
        pytest.param({"labels": {"file": "shard-\udcff"}}, id="label-value"),
    ],
)
def test_a_lone_surrogate_accepted_at_the_call_does_not_kill_the_writer(
    run: Emitter, fake_redis: FlakyRedis, bad: dict[str, Any]
) -> None:
    """A str with a lone surrogate (bytes that were not UTF-8, decoded by os.fsdecode) is
    refused at the call: it once passed every check and stopped the writer thread when
    encoded, losing every later point."""
    run.log_metric("loss", 1.0, step=0)
    run.flush(timeout=5)
    point: dict[str, Any] = {"name": "loss", "value": 2.0, "step": 1, **bad}
    with contextlib.suppress(PointError):  # refusing it at the call is fine
        run.log_metric(**point)
    run.log_metric("loss", 3.0, step=2)
    with contextlib.suppress(TimeoutError):  # asserted below, with the reason
        run.flush(timeout=3)
    assert run._thread.is_alive(), "the Emitter's writer thread died"
    assert ("loss", 2) in _points(fake_redis), "a point logged after the bad one was lost"


def test_compat_log_parameters_recovers_after_a_refused_parameter(
    fake_redis: FlakyRedis, tmp_path: Path
) -> None:
    """Tracking.log_parameters keeps its merge only once written, and writes what JSON cannot
    hold as it is (a Path, a numpy scalar) as text or a number: one such value once stayed in
    the merge and failed every later call, valid parameters included."""
    tracking = compat.Tracking()
    tracking.start_run(
        "run-parity-compat",
        redis_url="redis://127.0.0.1:1/0",
        spool_dir=str(tmp_path / "spool"),
        flush_interval=0.02,
        handle_sigterm=False,
    )
    try:
        with contextlib.suppress(TypeError, ValueError):  # refusing the odd value is fine
            tracking.log_parameters({"data_dir": Path("/data/train")})
        tracking.log_parameters({"epochs": 3})  # raises today: the Path is still merged in
    finally:
        tracking.end_run(timeout=2)
    infos = [
        info
        for data in fake_redis.entries
        for info in orjson.loads(data).get("customInfo", [])
        if info["name"] == "parameters"
    ]
    assert infos and json.loads(infos[-1]["value"])["epochs"] == 3


# --------------------------------------------------------------------------- ingest


class _StreamFake:
    """What append_document uses of a ``redis.asyncio`` client."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []

    async def xadd(self, key: str, fields: dict[str, bytes]) -> bytes:
        self.entries.append(fields["resource"])
        return b"1700000000000-0"


async def test_ingest_never_answers_204_to_what_the_worker_dead_letters_invalid() -> None:
    """A PATCH body with one customInfo item over 5,000,000 encoded bytes (well within the
    ingest's 8 MiB body limit) is answered 413, as the API answers it: ingest once answered
    204, and the worker then dead-lettered the item ``invalid``."""
    stream = _StreamFake()
    app = build_ingest_app(stream, IngestConfig(Keys()))  # type: ignore[arg-type]
    value = "x" * MAX_CUSTOM_INFO_BYTES  # the item is 28 bytes more once encoded
    body = {"executionId": "exec-parity-2", "customInfo": [{"name": "report", "value": value}]}
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.patch(
            "/v2/lm/metrics",
            data=orjson.dumps(body),
            headers={"AI-Resource-Group": GROUP, "Content-Type": "application/json"},
        )
        status = response.status
    invalid = [reason for raw in stream.entries for reason in worker_intake(raw)[1]]
    assert not (status == 204 and invalid), f"ingest answered 204, the worker: {invalid}"


# --------------------------------------------------------------------------- the worker


def _spaced_exactly_at_the_limit() -> dict[str, Any]:
    """customInfo whose compact encoding is exactly 5,000,000 bytes (allowed); written with
    Python's json.dumps (', ' and ': ') it is 3 bytes more."""
    overhead = len(orjson.dumps({"name": "report", "value": ""}))
    value = "x" * (MAX_CUSTOM_INFO_BYTES - overhead)
    return {"executionId": "exec-parity-3", "customInfo": [{"name": "report", "value": value}]}


def _escaped_non_ascii() -> dict[str, Any]:
    """4.8 MB of UTF-8 text (allowed); json.dumps' default ensure_ascii writes 9.6 MB."""
    return {
        "executionId": "exec-parity-3",
        "customInfo": [{"name": "notes", "value": "数" * 1_600_000}],
    }


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(_spaced_exactly_at_the_limit(), id="json.dumps-spacing"),
        pytest.param(_escaped_non_ascii(), id="json.dumps-ensure_ascii"),
    ],
)
def test_the_msgspec_pass_and_the_pydantic_path_agree_on_custom_info_size(
    document: dict[str, Any],
) -> None:
    """A customInfo item within 5 MB compactly, but over it as a plain-XADD producer wrote it
    (``json.dumps`` spacing, ``\\u`` escapes), is delivered as codec.py would: the msgspec pass,
    which keeps items as written, once measured those bytes and dead-lettered it ``invalid``."""
    compact = orjson.dumps(document)
    assert len(compact) < 8 * 1024 * 1024 and not pydantic_path(compact)[1]  # valid
    written = json.dumps(document).encode()  # what a Python producer's plain XADD carries
    bodies, invalid = worker_intake(written)
    assert not invalid, f"the worker dead-letters a valid entry: {invalid}"
    assert [orjson.loads(b) for b in bodies] == [orjson.loads(b) for b in pydantic_path(written)[0]]


def test_worker_intake_helper_matches_the_pydantic_path_on_plain_entries() -> None:
    """The helper above is faithful: on an ordinary entry both give the same bodies."""
    raw = orjson.dumps(
        {
            "executionId": "exec-parity-4",
            "metrics": [
                {
                    "name": "loss",
                    "value": 0.5,
                    "step": 1,
                    "timestamp": "2026-12-01T12:00:00.123456Z",
                }
            ],
            "tags": [{"name": "t", "value": "1"}, {"name": "t", "value": "2"}],
        }
    )
    fast, slow = worker_intake(raw), pydantic_path(raw)
    assert fast[1] == slow[1] == []
    assert [orjson.loads(b) for b in fast[0]] == [orjson.loads(b) for b in slow[0]]
    assert orjson.loads(fast[0][0])["tags"] == [{"name": "t", "value": "2"}]  # last write wins
