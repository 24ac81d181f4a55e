"""Producer benchmark on W1 (WORKLOADS.md): what the Emitter costs a DDP job, per point.

E = 16 executions x R = 8 ranks in one process: one Emitter per execution, each rank calling
``log_metrics({8 metrics}, step=s, labels={"rank": r})`` every step (ranks 0 and 4 also label
``node``: 25 % of the points), values floats from a pool, against a private redis-server.

Two figures per run, each next to ``deque.append`` of the same arguments in the same loop and
the same run (the floor of any call that buffers):

- **calling thread**: the logging loop's own CPU time (``time.thread_time``) per point;
- **process**: the whole process's CPU (``time.process_time``: the writer threads and the Redis
  client included) from the first call until every point is in Redis (``flush``), per point.

The two loops alternate within each run, so noise on this shared machine hits both alike; the
table gives median/min/max over the runs and the ratios. Targets (issue 16): calling thread
≤ 1 µs per point, process ≤ 2.5 µs per point. Run: ``python -m bench producer [--tiny]
[--runs N] [--steps N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import report
from bench.workloads import NAMES
from metricrelay import Emitter
from metricrelay.devtools.embedded import RedisServer

RESULTS = Path(__file__).parent / "results" / "producer.json"
EXECUTIONS = 16
RANKS = 8
POOL = 64  # value dicts cycled through: realistic floats, no RNG inside the timed loop
TARGET_CALL_US = 1.0
TARGET_PROCESS_US = 2.5


@dataclass(frozen=True)
class Size:
    runs: int
    steps: int  # per run: points = steps x 16 x 8 x 8


FULL = Size(runs=5, steps=400)
TINY = Size(runs=1, steps=4)


def rank_labels() -> list[dict[str, str]]:
    """``rank`` on every call; ranks 0 and 4 (a quarter of the points) also carry ``node``."""
    return [
        {"rank": str(r), "node": f"node-{r}"} if r % 4 == 0 else {"rank": str(r)}
        for r in range(RANKS)
    ]


def value_pool(seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{name: rng.uniform(0.0, 10.0) for name in NAMES} for _ in range(POOL)]


def timed_loop(log: Any, targets: list[Any], steps: int, pool: list[dict[str, float]]) -> float:
    """Every step, every execution's 8 ranks call ``log(target, values, step, labels)``;
    returns the calling thread's CPU seconds."""
    labels = rank_labels()
    started = time.thread_time()
    for step in range(steps):
        values = pool[step % POOL]
        for target in targets:
            for rank_label in labels:
                log(target, values, step, rank_label)
    return time.thread_time() - started


def deque_run(steps: int, pool: list[dict[str, float]]) -> float:
    """The floor: the same calls appending their arguments to a deque."""
    queues: list[deque[tuple[Any, ...]]] = [deque() for _ in range(EXECUTIONS)]

    def log(queue: deque[tuple[Any, ...]], values: Any, step: int, labels: Any) -> None:
        queue.append((values, step, labels))

    return timed_loop(log, queues, steps, pool)


def emitter_run(
    url: str, tag: str, steps: int, pool: list[dict[str, float]]
) -> tuple[dict[str, float], set[str]]:
    """The W1 loop through 16 Emitters, then ``flush``: the figures and the streams written."""
    emitters = [
        Emitter(f"bench-w1-{tag}-{e:02d}", redis_url=url, handle_sigterm=False)
        for e in range(EXECUTIONS)
    ]

    def log(emitter: Emitter, values: Any, step: int, labels: Any) -> None:
        emitter.log_metrics(values, step=step, labels=labels)

    try:
        process_started = time.process_time()
        wall_started = time.perf_counter()
        calling = timed_loop(log, emitters, steps, pool)
        for emitter in emitters:
            emitter.flush(timeout=300)
        process = time.process_time() - process_started
        wall = time.perf_counter() - wall_started
        written = sum(emitter.written_points for emitter in emitters)
    finally:
        for emitter in emitters:
            emitter.close()
    streams = {emitter.config.keys.events for emitter in emitters}
    return {"calling_s": calling, "process_s": process, "wall_s": wall, "written": written}, streams


def points_in(client: redis.Redis, stream: str) -> int:
    """The metrics the stream's fragments hold (what reached Redis)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return sum(len(orjson.loads(fields[b"resource"]).get("metrics", [])) for _, fields in entries)


spread = partial(report.spread, digits=4)


def measure(size: Size) -> dict[str, Any]:
    points = size.steps * EXECUTIONS * RANKS * len(NAMES)
    runs: list[dict[str, float]] = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        for run in range(size.runs):
            pool = value_pool(run)
            floor = deque_run(size.steps, pool)
            measured, streams = emitter_run(server.url, str(run), size.steps, pool)
            in_redis = sum(points_in(client, stream) for stream in streams)
            if measured["written"] != points or in_redis != points:
                raise RuntimeError(
                    f"run {run}: {points} points logged, {measured['written']} written, "
                    f"{in_redis} in Redis"
                )
            client.flushall()
            runs.append(
                {
                    "deque_append_us": floor / points * 1e6,
                    "calling_thread_us": measured["calling_s"] / points * 1e6,
                    "process_cpu_us": measured["process_s"] / points * 1e6,
                    "points_per_s_into_redis": points / measured["wall_s"],
                }
            )
    summary = {key: spread([run[key] for run in runs]) for key in runs[0]}
    floor = summary["deque_append_us"]["median"]
    return {
        "points_per_run": points,
        "calling_thread_us_per_point": summary["calling_thread_us"],
        "process_cpu_us_per_point": summary["process_cpu_us"],
        "deque_append_us_per_point": summary["deque_append_us"],
        "points_per_s_into_redis": summary["points_per_s_into_redis"],
        "ratios": {
            "calling_thread_over_deque": round(summary["calling_thread_us"]["median"] / floor, 2),
            "process_over_deque": round(summary["process_cpu_us"]["median"] / floor, 2),
        },
        "targets": {
            "calling_thread_us_per_point": TARGET_CALL_US,
            "process_cpu_us_per_point": TARGET_PROCESS_US,
        },
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"W1: {EXECUTIONS} executions x {RANKS} ranks x 8 metrics, labels rank (+node 25 %)")
    print(f"{'µs per point':34} {'median':>9} {'min':>9} {'max':>9} {'x deque':>8}")
    floor = result["deque_append_us_per_point"]["median"]
    for key in ("deque_append", "calling_thread", "process_cpu"):
        row = result[f"{key}_us_per_point"]
        ratio = row["median"] / floor
        print(f"{key:34} {row['median']:9.3f} {row['min']:9.3f} {row['max']:9.3f} {ratio:8.1f}")
    rate = result["points_per_s_into_redis"]
    print(f"points/s into Redis (wall): median {rate['median']:,.0f}")
    print(
        f"targets: calling thread ≤ {TARGET_CALL_US} µs, process ≤ {TARGET_PROCESS_US} µs per point"
    )


def sized_args(argv: list[str], name: str, doc: str | None, results: Path) -> argparse.Namespace:
    """``--tiny``/``--runs``/``--steps``/``--out`` of a W1 harness (this one, bench/spool.py);
    ``size`` holds the Size chosen."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc)
    parser.add_argument("--tiny", action="store_true", help="smoke size: one short run")
    parser.add_argument("--runs", type=int, help=f"runs (default {FULL.runs})")
    parser.add_argument("--steps", type=int, help=f"steps per run (default {FULL.steps})")
    parser.add_argument("--out", type=Path, default=results)
    args = parser.parse_args(argv)
    size = TINY if args.tiny else FULL
    args.size = Size(runs=args.runs or size.runs, steps=args.steps or size.steps)
    return args


def write_result(out: Path, size: Size, result: dict[str, Any]) -> None:
    report.write_results(out, result, runs=size.runs, steps=size.steps)


def main(argv: list[str]) -> int:
    args = sized_args(argv, "producer", __doc__, RESULTS)
    result = measure(args.size)
    print_table(result)
    write_result(args.out, args.size, result)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
