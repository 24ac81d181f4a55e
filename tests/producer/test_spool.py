"""The disk spool (issue 18): framing, torn and corrupt files, commit marks, bounds, replay."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from metricrelay.producer.spool import Spool, commit_path, default_directory
from metricrelay.producer.spool_format import (
    Commit,
    Scan,
    decode_commit,
    encode_commit,
    encode_record,
    read_records,
)
from metricrelay.producer.spool_replay import claim, find_leftovers, replay, summarize

KEY = "metricrelay:events"


def fragment(step: int) -> bytes:
    metric = {"name": "loss", "value": step / 10, "step": step}
    return orjson.dumps({"executionId": "exec-1", "metrics": [metric]})


class FakeRedis:
    """Just what replay uses: a pipeline of XADDs; ``fail_after`` makes a later execute fail."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.entries: list[tuple[str, bytes]] = []
        self.fail_after = fail_after
        self._queued: list[tuple[str, bytes]] = []

    def pipeline(self, transaction: bool = False) -> FakeRedis:
        return self

    def xadd(self, key: str, fields: dict[str, bytes]) -> None:
        self._queued.append((key, fields["resource"]))

    def execute(self) -> list[bytes]:
        queued, self._queued = self._queued, []
        if self.fail_after is not None and len(self.entries) >= self.fail_after:
            raise ConnectionError("redis went away")
        self.entries += queued
        return [f"{len(self.entries)}-{i}".encode() for i in range(len(queued))]


def steps(entries: list[tuple[str, bytes]]) -> list[int]:
    return [orjson.loads(data)["metrics"][0]["step"] for _, data in entries]


def spool_of(tmp_path: Path, **options: Any) -> Spool:
    return Spool(tmp_path, "exec-1", max_bytes=options.pop("max_bytes", 10**9), **options)


# --------------------------------------------------------------------------- the format


def test_records_round_trip_and_a_torn_tail_is_skipped() -> None:
    data = encode_record(KEY, fragment(1)) + encode_record(KEY, fragment(2))
    torn = data + encode_record(KEY, fragment(3))[:-5]  # killed in the middle of a write
    scan = Scan()
    records = list(read_records(io.BytesIO(torn), 0, scan))
    assert [(r.key, r.data) for r in records] == [(KEY, fragment(1)), (KEY, fragment(2))]
    assert (scan.status, scan.at, scan.skipped_bytes) == ("torn", len(data), len(torn) - len(data))
    scan = Scan()
    assert len(list(read_records(io.BytesIO(data + b"\x00\x00"), 0, scan))) == 2
    assert scan.status == "torn"  # not even a whole header


def test_a_corrupt_record_is_reported_and_never_read() -> None:
    first, second, third = (encode_record(KEY, fragment(n)) for n in (1, 2, 3))
    damaged = bytearray(first + second + third)
    damaged[len(first) + 20] ^= 0x01  # one bit of the second record's payload
    scan = Scan()
    records = list(read_records(io.BytesIO(bytes(damaged)), 0, scan))
    assert [r.data for r in records] == [fragment(1)]
    assert (scan.status, scan.at) == ("corrupt", len(first))


def test_a_damaged_commit_mark_reads_as_nothing_committed() -> None:
    raw = encode_commit(Commit(3, 1234))
    assert decode_commit(raw) == Commit(3, 1234)
    assert decode_commit(raw[:-1] + bytes([raw[-1] ^ 1])) is None
    assert decode_commit(b"") is None


def test_the_default_directory_is_per_user() -> None:
    assert default_directory(None, {"XDG_CACHE_HOME": "/c"}) == Path("/c/metricrelay/spool")
    assert default_directory(None, {}) == Path.home() / ".cache/metricrelay/spool"
    assert default_directory("/given", {"XDG_CACHE_HOME": "/c"}) == Path("/given")


# --------------------------------------------------------------------------- one process's spool


@pytest.mark.parametrize("fsync", ["always", "batch", "never"])
def test_spooled_records_come_back_in_order_and_committed_ones_go(
    tmp_path: Path, fsync: Any
) -> None:
    spool = spool_of(tmp_path, fsync=fsync, segment_bytes=300)  # a few records per segment
    for step in range(0, 20, 4):
        assert spool.append([(KEY, fragment(s)) for s in range(step, step + 4)])
    assert spool.pending == 20
    assert len(list(tmp_path.glob("*.spool"))) > 2
    seen: list[int] = []
    while batch := spool.peek(3):
        seen += [orjson.loads(r.data)["metrics"][0]["step"] for _, r in batch]
        number, last = batch[-1]
        spool.commit(number, last.end, len(batch))
    assert seen == list(range(20))
    assert (spool.pending, list(tmp_path.glob("*.spool"))) == (0, [])  # replayed: deleted
    spool.append([(KEY, fragment(20))])  # and it goes on after being drained
    assert [r.data for _, r in spool.peek(10)] == [fragment(20)]
    assert spool.close() is not None  # one record left: kept on disk
    assert len(list(tmp_path.glob("*.spool"))) == 1


def test_an_empty_spool_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = spool_of(tmp_path)
    spool.append([(KEY, fragment(1))])
    number, record = spool.peek(1)[0]
    spool.commit(number, record.end, 1)
    assert spool.close() is None
    assert list(tmp_path.iterdir()) == []


def test_the_disk_bound_refuses_a_batch_whole(tmp_path: Path) -> None:
    one = len(encode_record(KEY, fragment(1)))
    spool = spool_of(tmp_path, max_bytes=3 * one)
    assert spool.append([(KEY, fragment(1)), (KEY, fragment(2))])
    assert not spool.append([(KEY, fragment(3)), (KEY, fragment(4))])  # would be 4 records
    assert spool.append([(KEY, fragment(3))])
    assert (spool.pending, spool.disk_bytes) == (3, 3 * one)
    number, record = spool.peek(3)[-1]
    spool.commit(number, record.end, 3)
    assert spool.disk_bytes == 0  # given back once replayed
    assert spool.append([(KEY, fragment(4)), (KEY, fragment(5))])


# --------------------------------------------------------------------------- leftovers


def leave_spool(directory: Path, steps: range, **options: Any) -> Path:
    """A spool as a dead process leaves it: records on disk, lock released."""
    spool = spool_of(directory, segment_bytes=options.pop("segment_bytes", 400), **options)
    for step in steps:
        spool.append([(KEY, fragment(step))])
    left = spool.close()
    assert left is not None
    return left


def test_a_leftover_is_replayed_in_order_then_deleted(tmp_path: Path) -> None:
    leave_spool(tmp_path, range(50))
    [leftover] = find_leftovers(tmp_path)
    assert leftover.execution_id == "exec-1"
    assert (summarize(leftover).records, summarize(leftover).items) == (50, 50)
    redis, told = FakeRedis(), list[int]()
    with claim(leftover) as mine:
        assert mine
        outcome = replay(redis, leftover, told.append)
    assert steps(redis.entries) == list(range(50))
    assert (outcome.records, sum(told), len(outcome.ids)) == (50, 50, 50)
    assert list(tmp_path.iterdir()) == []


def test_a_replay_cut_short_resumes_after_its_commit_mark(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("metricrelay.producer.spool_replay.CHUNK", 10)
    leave_spool(tmp_path, range(35), segment_bytes=10**6)
    [leftover] = find_leftovers(tmp_path)
    first = FakeRedis(fail_after=20)
    with claim(leftover), pytest.raises(ConnectionError):
        replay(first, leftover)
    assert steps(first.entries) == list(range(20))
    second = FakeRedis()
    [leftover] = find_leftovers(tmp_path)
    with claim(leftover):
        replay(second, leftover)
    assert steps(second.entries) == list(range(20, 35))  # nothing twice, nothing skipped


def test_a_live_process_spool_is_not_claimed(tmp_path: Path) -> None:
    spool = spool_of(tmp_path)
    spool.append([(KEY, fragment(1))])
    [leftover] = find_leftovers(tmp_path)
    with claim(leftover) as mine:
        assert not mine
    spool.close()
    with claim(leftover) as mine:
        assert mine


def test_truncated_and_corrupted_files(tmp_path: Path) -> None:
    """The torn tail of one spool is skipped and reported; a corrupt record stops its spool,
    which stays on disk; what precedes either is delivered."""
    torn_dir, bad_dir = tmp_path / "torn", tmp_path / "bad"
    torn = leave_spool(torn_dir, range(5), segment_bytes=10**6)
    with torn.open("r+b") as file:
        file.truncate(torn.stat().st_size - 7)
    bad = leave_spool(bad_dir, range(5), segment_bytes=10**6)
    raw = bytearray(bad.read_bytes())
    raw[len(encode_record(KEY, fragment(0))) * 2 + 15] ^= 0xFF  # inside the third record
    bad.write_bytes(bytes(raw))

    [leftover] = find_leftovers(torn_dir)
    assert summarize(leftover).torn
    redis = FakeRedis()
    with claim(leftover):
        outcome = replay(redis, leftover)
    assert steps(redis.entries) == [0, 1, 2, 3]
    assert outcome.torn and not outcome.corrupt
    assert list(torn_dir.iterdir()) == []

    [leftover] = find_leftovers(bad_dir)
    redis = FakeRedis()
    with claim(leftover):
        outcome = replay(redis, leftover)
    assert steps(redis.entries) == [0, 1]
    assert outcome.corrupt and str(bad) in outcome.corrupt[0]
    assert bad.exists() and commit_path(bad_dir, leftover.name).exists()


def test_a_dry_run_lists_the_executions_the_records_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`metricrelay emit` spools every execution it writes in one spool, named ``emit``: the
    listing goes by the executionId of each record, the spool's torn end under its first."""
    from metricrelay.commands.spool import _dry_run  # noqa: PLC0415

    def of(execution: str, step: int, tags: int = 0) -> bytes:
        tagged = [{"name": f"t{i}", "value": "v"} for i in range(tags)]
        metric = {"name": "loss", "value": 1.0, "step": step}
        return orjson.dumps({"executionId": execution, "metrics": [metric], "tags": tagged})

    spool = Spool(tmp_path, "emit", max_bytes=10**9)
    for step in range(3):
        spool.append([(KEY, of("run-x1", step)), (KEY, of("run-y1", step, tags=1))])
    left = spool.close()
    assert left is not None
    with left.open("ab") as file:
        file.write(encode_record(KEY, of("run-y1", 3))[:-2])
    [leftover] = find_leftovers(tmp_path)
    assert leftover.execution_id == "emit"  # the file name's
    assert summarize(leftover).executions == {"run-x1": [3, 3], "run-y1": [3, 6]}
    assert _dry_run([leftover]) == 0
    [first, torn, second] = capsys.readouterr().out.splitlines()
    assert (first, second) == ("run-x1\t3 record(s)\t3 item(s)", "run-y1\t3 record(s)\t6 item(s)")
    assert torn.startswith("  torn last record, would be skipped:")
