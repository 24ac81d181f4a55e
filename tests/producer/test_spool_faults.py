"""The disk spool under faults of its own: a name another spool had, a disk that fills or fails
mid-append, leftovers of dead processes, replays racing each other or dying half-way, and what
close() and flush() report. Each was once a way to lose, repeat or reorder records.
Redis is a fake here (as in test_spool_writer.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from tests.support.spool_fakes import Clock, FlakyRedis, diverter, never, record, steps
from tests.support.waiting import until_sync

from metricrelay.devtools.embedded import free_port
from metricrelay.producer import spool as spool_module
from metricrelay.producer.emitter import Emitter
from metricrelay.producer.spool import Spool, commit_path, segment_path
from metricrelay.producer.spool_format import Commit, encode_commit, encode_record
from metricrelay.producer.spool_replay import claim, find_leftovers, replay


def dead_spool(directory: Path, pid: int, numbers: range) -> None:
    """The files a dead process of execution exec-1 with ``pid`` left: one segment, no mark."""
    directory.mkdir(parents=True, exist_ok=True)
    path = segment_path(directory, f"exec-1@{pid}", 0)
    path.write_bytes(b"".join(encode_record(*record(n)) for n in numbers))


# --------------------------------------------------------------------------- 1. a reused name


def test_a_spool_left_under_this_pid_is_not_mixed_into_the_new_one(tmp_path: Path) -> None:
    """A spool left under this process's pid (a container's process has the same pid at every
    start; or an earlier Emitter of this process closed while Redis was away) is not appended
    to: the new spool has a name of its own, the old one is a leftover replayed first. (When
    the new spool opened the old segment, its counts ignored the old records and the next
    batches were counted as replayed without being sent.)"""
    old = Spool(tmp_path, "exec-1", max_bytes=10**9)  # this pid: as a previous process had it
    old.append([record(0), record(1)])
    assert old.close() is not None  # left on disk: Redis was away
    redis, clock = FlakyRedis(), Clock()
    redis.up = False
    way = diverter(tmp_path, redis, clock)
    way.drain()  # the leftover cannot be replayed: Redis is away
    assert way.deliver([record(2)], pressure=False, stop=never)[0] == "spooled"
    redis.up, clock.now = True, 100.0
    way.drain()
    for step in range(3, 6):  # the training goes on, Redis is up
        way.deliver([record(step)], pressure=False, stop=never)
        way.drain()
    assert steps(redis) == [0, 1, 2, 3, 4, 5]
    assert way.close() == (0, None)


# --------------------------------------------------------------------------- 2. a failed append


def test_a_failed_append_leaves_no_partial_frame_behind(tmp_path: Path, monkeypatch: Any) -> None:
    """The disk fills up in the middle of an append: the half-written frame is cut off again,
    so the batch, refused once and retried, follows the last whole record (a half frame left
    in place stopped the reader there, with every later record behind it)."""
    redis, clock = FlakyRedis(), Clock()
    redis.up = False
    way = diverter(tmp_path, redis, clock)
    assert way.deliver([record(0)], pressure=False, stop=never)[0] == "spooled"
    real = spool_module._write_all
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def disk_full_once(fd: int, data: bytes) -> None:
        if failures:
            real(fd, data[: len(data) // 2])  # what os.write managed before ENOSPC
            raise failures.pop()
        real(fd, data)

    monkeypatch.setattr(spool_module, "_write_all", disk_full_once)
    # refused once (the disk was full), taken on the retry: log_* never saw a thing
    assert way.deliver([record(1)], pressure=False, stop=never)[0] == "spooled"
    assert way.refused == 1
    redis.up, clock.now = True, 100.0
    way.drain()
    assert steps(redis) == [0, 1]
    assert way.spooled == 0


def test_a_failed_fsync_neither_repeats_nor_loses_records(tmp_path: Path, monkeypatch: Any) -> None:
    """The write is whole but its fsync fails (EIO, policy "batch"): the frame is cut off, so
    its retry is not a second copy (which had made the spool count one record too few and
    skip the next batch)."""
    import os as real_os  # noqa: PLC0415

    failures = [OSError(errno.EIO, "Input/output error")]

    class FsyncFailsOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_os, name)

        def fsync(self, fd: int) -> None:
            if failures:
                raise failures.pop()
            real_os.fsync(fd)

    redis, clock = FlakyRedis(), Clock()
    redis.up = False
    way = diverter(tmp_path, redis, clock, fsync="batch")
    assert way.deliver([record(0)], pressure=False, stop=never)[0] == "spooled"
    monkeypatch.setattr(spool_module, "os", FsyncFailsOnce())
    assert way.deliver([record(1)], pressure=False, stop=never)[0] == "spooled"
    redis.up, clock.now = True, 100.0
    way.drain()
    for step in range(2, 4):
        way.deliver([record(step)], pressure=False, stop=never)
        way.drain()
    assert steps(redis) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- 3. leftovers first


def test_new_records_do_not_overtake_a_dead_process_leftover(tmp_path: Path) -> None:
    """Spools that dead processes of the execution left are replayed before anything new
    goes to Redis, also when the first try to replay them failed (Redis away at the start)."""
    dead_spool(tmp_path, 4_194_000, range(2))  # another pid: no name clash here
    redis, clock = FlakyRedis(), Clock()
    redis.up = False
    way = diverter(tmp_path, redis, clock)
    way.drain()  # Redis away: the leftover waits
    assert way.behind
    redis.up, clock.now = True, 100.0  # Redis is back, the backoff has passed
    way.deliver([record(2)], pressure=False, stop=never)
    way.drain()
    assert steps(redis) == [0, 1, 2]


# --------------------------------------------------------------------------- 4. a vanished spool


def test_replay_all_of_a_spool_replayed_meanwhile_by_another_process(tmp_path: Path) -> None:
    """Two replays of one directory (two ranks' Emitters at a restart, or two
    ``metricrelay spool replay``): a spool the other replayed and deleted after it was listed
    is nothing to do — no traceback, no stray lock file."""
    from metricrelay.commands.spool import _replay_all  # noqa: PLC0415

    dead_spool(tmp_path, 4_194_001, range(3))
    listed_by_second = find_leftovers(tmp_path)
    for leftover in find_leftovers(tmp_path):  # the first one
        with claim(leftover) as mine:
            assert mine
            replay(FlakyRedis(), leftover)
    assert list(tmp_path.iterdir()) == []
    assert _replay_all(FlakyRedis(), listed_by_second, "redis://x") == 0
    assert list(tmp_path.iterdir()) == []


def test_replay_all_survives_an_emitter_that_finished_meanwhile(tmp_path: Path) -> None:
    """``metricrelay spool replay`` while an Emitter on the machine catches up and closes: the
    live spool it listed vanishes before it is read; the dead process's spool is replayed
    all the same and the command succeeds."""
    from metricrelay.commands.spool import _replay_all  # noqa: PLC0415

    dead_spool(tmp_path, 4_194_003, range(2))
    live = Spool(tmp_path, "exec-1", max_bytes=10**9)
    assert live.append([record(10), record(11)])
    listed = find_leftovers(tmp_path)
    batch = live.peek(10)  # its owner replays it all and closes: nothing left of it
    number, last = batch[-1]
    live.commit(number, last.end, len(batch))
    assert live.close() is None
    redis = FlakyRedis()
    assert _replay_all(redis, listed, "redis://x") == 0
    assert steps(redis) == [0, 1]  # the dead process's records
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 5. mark, then unlink


def test_a_segment_behind_the_commit_mark_is_not_left_for_a_second_replay(tmp_path: Path) -> None:
    """A replay killed between marking a segment done and deleting it: the next replay
    deletes the segment behind the mark instead of leaving it, mark-less, for a replay after
    that to send again."""
    name = "exec-1@4194002"
    segment_path(tmp_path, name, 0).write_bytes(b"".join(encode_record(*record(n)) for n in (0, 1)))
    segment_path(tmp_path, name, 1).write_bytes(b"".join(encode_record(*record(n)) for n in (2, 3)))
    commit_path(tmp_path, name).write_bytes(encode_commit(Commit(1, 0)))  # killed here
    first = FlakyRedis()
    for leftover in find_leftovers(tmp_path):
        with claim(leftover) as mine:
            assert mine
            replay(first, leftover)
    assert steps(first) == [2, 3]
    second = FlakyRedis()
    for leftover in find_leftovers(tmp_path):
        with claim(leftover):
            replay(second, leftover)
    assert steps(second) == []
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 6. close's report


def test_close_reports_the_batch_it_gave_up_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the spool off (or full) and Redis away, close() counts the calls the writer holds
    in its retry loop as not written, and not its own flush marker."""
    down = f"redis://127.0.0.1:{free_port()}/0"
    run = Emitter(
        "exec-report",
        redis_url=down,
        spool_dir=str(tmp_path),
        spool_max_bytes=0,  # no spool: retry Redis until close gives up
        flush_interval=0.5,  # the writer takes the ten calls at once
        handle_sigterm=False,
    )
    for step in range(10):
        run.log_metrics({"loss": 1.0}, step=step)
    until_sync(lambda: not run._queue, timeout=10, what="the writer takes the batch")
    with caplog.at_level(logging.ERROR, logger="metricrelay.producer"):
        run.close(timeout=0.5)
    assert "closing with 10 operations not written to Redis" in caplog.text, caplog.text


# --------------------------------------------------------------------------- 7. async flush


async def test_async_flush_does_not_report_spooled_records_as_in_redis(tmp_path: Path) -> None:
    """A ``log_*`` call under policy ``block`` that writes the queue's head itself (on the loop's
    thread) and sends a waiting flush's marker to the spool: that flush raises SpoolPending,
    Redis being away, instead of reporting all in Redis."""
    from metricrelay.producer.async_emitter import AsyncEmitter  # noqa: PLC0415
    from metricrelay.producer.emitter import SpoolPending  # noqa: PLC0415

    down = f"redis://127.0.0.1:{free_port()}/0"
    async with AsyncEmitter(
        "exec-async",
        redis_url=down,
        spool_dir=str(tmp_path),
        flush_interval=60,  # the writer task waits to be woken
        max_buffer_bytes=1000,  # about ten points
        policy="block",
        block_timeout=5,
    ) as run:
        for step in range(5):
            run.log_metric("loss", 1.0, step=step)
        flushing = asyncio.create_task(run.flush(timeout=1))
        await asyncio.sleep(0)  # the flush's marker is queued behind the five points
        for step in range(5, 12):  # the buffer fills: this call writes the head itself
            run.log_metric("loss", 1.0, step=step)
        assert run.spooled > 0  # the five points and the marker went to the spool
        with pytest.raises(SpoolPending):
            await flushing
