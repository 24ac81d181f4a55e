"""The Emitter's spool path on W1 (issue 18): what a point costs while Redis is away, and how
fast the spool goes back into Redis.

The loop of bench/producer.py (16 executions x 8 ranks, ``log_metrics`` of 8 metrics with
labels, one Emitter per execution) against a private redis-server on loopback and a spool
directory under a temporary one; each run goes through these variants in turn:

- ``deque.append`` of the same arguments: the floor;
- **direct**: Redis up, measured until ``flush`` returns (every point in Redis);
- **spool (batch)**: the server stopped first, so every fragment goes to the spool with the
  default fsync policy ``batch``; measured until ``flush`` raises ``SpoolPending`` (every
  fragment on disk). Then the server comes back on the same port and the same Emitters replay:
  the time from Redis up until ``spooled == 0`` (it includes each writer's wait for its next
  try, a jittered backoff of up to 2 s, as in a real outage);
- **spool (never)**: the same with ``spool_fsync="never"``; the Emitters then close while
  Redis is still away, and their leftovers are replayed as ``metricrelay spool replay`` does
  (``spool_replay.replay``, the CLI's progress pre-pass left out) once Redis is back.

Calling-thread CPU (``time.thread_time``) and process CPU (``time.process_time``) per point,
median/min/max over the runs (redis-server's own CPU is not counted); the spool's bytes on
disk per point; replay points/s and records/s. Every phase's points are counted in the
streams; a missing one fails the harness.

Run: ``python -m bench spool [--tiny] [--runs N] [--steps N] [--out FILE]``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from bench.producer import (
    EXECUTIONS,
    RANKS,
    Size,
    deque_run,
    points_in,
    sized_args,
    spread,
    timed_loop,
    value_pool,
    write_result,
)
from bench.workloads import NAMES
from metricrelay import Emitter
from metricrelay.connection import sync_client
from metricrelay.devtools.embedded import RedisServer
from metricrelay.producer.emitter import SpoolPending
from metricrelay.producer.spool import FsyncPolicy
from metricrelay.producer.spool_replay import Outcome, claim, find_leftovers, replay

RESULTS = Path(__file__).parent / "results" / "spool.json"
PATIENCE_S = 300.0  # the longest any phase waits: the harness stops by itself


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Each Emitter warns once when Redis goes and once when it closes with a spool left: 16
    of each per phase would bury the table (errors still show)."""
    logger = logging.getLogger("metricrelay")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def until_spooled(emitter: Emitter) -> None:
    """Return once everything logged is on disk: ``flush`` raises ``SpoolPending``."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        try:
            emitter.flush(timeout=0.02)
        except SpoolPending:
            return
        except TimeoutError:  # not all on disk yet
            continue
        raise RuntimeError(f"{emitter.config.execution_id}: flushed to Redis while it was away")
    raise TimeoutError(f"{emitter.config.execution_id}: not spooled in {PATIENCE_S}s")


def logging_run(
    url: str,
    tag: str,
    pool: list[dict[str, float]],
    *,
    steps: int,
    spool: Path,
    fsync: FsyncPolicy,
    settle: Callable[[Emitter], Any],
) -> tuple[list[Emitter], dict[str, float]]:
    """The W1 loop through 16 Emitters, then ``settle`` on each: the emitters, still open, and
    the calling thread's and the process's CPU seconds."""
    emitters = [
        Emitter(
            f"bench-spool-{tag}-{e:02d}",
            redis_url=url,
            spool_dir=str(spool),
            spool_fsync=fsync,
            handle_sigterm=False,
        )
        for e in range(EXECUTIONS)
    ]

    def log(emitter: Emitter, values: Any, step: int, labels: Any) -> None:
        emitter.log_metrics(values, step=step, labels=labels)

    process_started = time.process_time()
    wall_started = time.perf_counter()
    calling = timed_loop(log, emitters, steps, pool)
    for emitter in emitters:
        settle(emitter)
    return emitters, {
        "calling_s": calling,
        "process_s": time.process_time() - process_started,
        "wall_s": time.perf_counter() - wall_started,
    }


def replay_leftovers(url: str, spool: Path) -> tuple[Outcome, float, float]:
    """What ``metricrelay spool replay DIR`` does with each leftover: the outcome, wall and
    process CPU seconds."""
    client = sync_client(url)
    total = Outcome()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        for leftover in find_leftovers(spool):
            with claim(leftover) as mine:
                if not mine:
                    raise RuntimeError(f"{leftover.name} is held by a live process")
                total.add(replay(client, leftover))
    finally:
        client.close()
    return total, time.perf_counter() - wall, time.process_time() - cpu


class Run:
    """One run's phases against one server, in order; ``problems`` lists missing points."""

    def __init__(self, server: RedisServer, number: int, size: Size, root: Path) -> None:
        self.server, self.number, self.steps, self.root = server, number, size.steps, root
        self.points = size.steps * EXECUTIONS * RANKS * len(NAMES)
        self.pool = value_pool(number)
        self.figures: dict[str, float] = {}
        self.problems: list[str] = []

    def emitters(
        self, variant: str, fsync: FsyncPolicy, settle: Callable[[Emitter], Any]
    ) -> list[Emitter]:
        """The W1 loop of this variant; its CPU per point goes into the figures."""
        emitters, measured = logging_run(
            self.server.url,
            f"{variant}-{self.number}",
            self.pool,
            steps=self.steps,
            spool=self.root / variant,
            fsync=fsync,
            settle=settle,
        )
        self.figures[f"{variant}_calling_thread_us"] = measured["calling_s"] / self.points * 1e6
        self.figures[f"{variant}_process_cpu_us"] = measured["process_s"] / self.points * 1e6
        self.figures[f"{variant}_points_per_s"] = self.points / measured["wall_s"]
        return emitters

    def arrived(self, phase: str, emitters: list[Emitter]) -> None:
        """Count the points in the streams, note a shortfall, empty Redis for the next phase."""
        client = redis.Redis.from_url(self.server.url)
        try:
            streams = {emitter.config.keys.events for emitter in emitters}
            got = sum(points_in(client, stream) for stream in streams)
            if got != self.points:
                self.problems.append(
                    f"run {self.number} {phase}: {self.points} points logged, {got} in Redis"
                )
            client.flushall()
        finally:
            client.close()

    def direct(self) -> None:
        """(a) Redis up: until ``flush`` returns, every point in Redis."""
        emitters = self.emitters("direct", "batch", lambda e: e.flush(timeout=PATIENCE_S))
        for emitter in emitters:
            emitter.close()
        self.arrived("direct", emitters)

    def spool_then_emitter_replay(self) -> None:
        """(b) Redis stopped: every fragment to the spool (fsync batch); then (i) Redis back on
        the same port, and the same Emitters replay until ``spooled == 0``."""
        self.server.stop()
        emitters = self.emitters("spool_batch", "batch", until_spooled)
        segments = (self.root / "spool_batch").glob("*.spool")
        disk = sum(path.stat().st_size for path in segments)
        self.figures["spool_bytes_per_point"] = disk / self.points
        records = sum(emitter.spooled for emitter in emitters)
        self.server.start()
        wall, cpu = time.perf_counter(), time.process_time()
        for emitter in emitters:
            emitter.flush(timeout=PATIENCE_S)  # returns once its spool is replayed
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        for emitter in emitters:
            emitter.close()
        self.figures["emitter_replay_s"] = wall
        self.figures["emitter_replay_points_per_s"] = self.points / wall
        self.figures["emitter_replay_records_per_s"] = records / wall
        self.figures["emitter_replay_process_cpu_us"] = cpu / self.points * 1e6
        self.arrived("spool batch, replayed by the Emitters", emitters)

    def spool_then_leftover_replay(self) -> None:
        """(b) again with fsync never; the Emitters close in the outage; (ii) Redis back, the
        leftovers replayed as ``metricrelay spool replay`` does."""
        self.server.stop()
        emitters = self.emitters("spool_never", "never", until_spooled)
        for emitter in emitters:
            emitter.close()
        self.server.start()
        outcome, wall, cpu = replay_leftovers(self.server.url, self.root / "spool_never")
        if outcome.items != self.points or outcome.torn or outcome.corrupt:
            self.problems.append(
                f"run {self.number} leftovers: {outcome.items} of {self.points} points "
                f"replayed, torn {outcome.torn}, corrupt {outcome.corrupt}"
            )
        self.figures["leftover_replay_s"] = wall
        self.figures["leftover_replay_points_per_s"] = outcome.items / wall
        self.figures["leftover_replay_records_per_s"] = outcome.records / wall
        self.figures["leftover_replay_process_cpu_us"] = cpu / self.points * 1e6
        self.arrived("spool never, leftovers replayed", emitters)

    def all(self) -> None:
        self.figures["deque_append_us"] = deque_run(self.steps, self.pool) / self.points * 1e6
        self.direct()
        self.spool_then_emitter_replay()
        self.spool_then_leftover_replay()


def measure(size: Size) -> dict[str, Any]:
    runs: list[dict[str, float]] = []
    problems: list[str] = []
    with (
        quiet(),
        tempfile.TemporaryDirectory(prefix="bench-spool-") as root,
        RedisServer() as server,
    ):
        for number in range(size.runs):
            run = Run(server, number, size, Path(root) / str(number))
            run.all()
            runs.append(run.figures)
            problems += run.problems
    summary = {key: spread([run[key] for run in runs]) for key in runs[0]}

    def ratio(over: str, under: str) -> float:
        return round(summary[over]["median"] / summary[under]["median"], 2)

    return {
        "points_per_run": size.steps * EXECUTIONS * RANKS * len(NAMES),
        "fsync": "batch (the default); never beside it",
        "every_point_arrived": not problems,
        "problems": problems,
        **summary,
        "ratios": {
            "spool_batch_over_direct_process_cpu": ratio(
                "spool_batch_process_cpu_us", "direct_process_cpu_us"
            ),
            "spool_batch_over_direct_calling_thread": ratio(
                "spool_batch_calling_thread_us", "direct_calling_thread_us"
            ),
            "spool_batch_process_cpu_over_deque": ratio(
                "spool_batch_process_cpu_us", "deque_append_us"
            ),
        },
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"W1 spool path: {result['points_per_run']:,} points a run; fsync {result['fsync']}")
    print(f"{'':34} {'median':>9} {'min':>9} {'max':>9}")
    cpu = [
        f"{variant}_{what}_us"
        for variant in ("direct", "spool_batch", "spool_never")
        for what in ("calling_thread", "process_cpu")
    ]
    rows = [
        *((key, ".3f") for key in ("deque_append_us", *cpu)),
        ("spool_bytes_per_point", ",.1f"),
        *((f"{replayed}_{what}", ",.3f" if what == "s" else ",.0f")
          for replayed in ("emitter_replay", "leftover_replay")
          for what in ("s", "points_per_s", "records_per_s")),
        ("emitter_replay_process_cpu_us", ".3f"),
        ("leftover_replay_process_cpu_us", ".3f"),
    ]  # fmt: skip
    for key, form in rows:
        row = result[key]
        print(f"{key:34} {row['median']:9{form}} {row['min']:9{form}} {row['max']:9{form}}")
    print("ratios:", ", ".join(f"{key} {value}" for key, value in result["ratios"].items()))
    print(f"every point arrived: {result['every_point_arrived']}")
    for problem in result["problems"]:
        print(f"  {problem}")


def main(argv: list[str]) -> int:
    args = sized_args(argv, "spool", __doc__, RESULTS)
    result = measure(args.size)
    print_table(result)
    write_result(args.out, args.size, result)
    return 0 if result["every_point_arrived"] else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
