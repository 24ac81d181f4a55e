"""Producer benchmark: the cost of one ``log_metric`` in the training thread, and points/s into
Redis from one producer process, against a private redis-server on loopback.

Baselines in the same process: ``deque.append`` of a tuple (the floor of any buffering call)
and one XADD per point (what a naive producer does). Targets: ≤ 2 µs per call (median),
≥ 300k points/s packed. Run: ``python -m bench producer``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import redis

from metricrelay import Emitter
from metricrelay.devtools.embedded import RedisServer

RESULTS = Path(__file__).parent / "results" / "producer.json"
RUNS = 3
CALLS = 200_000  # per run, for the per-call cost
THROUGHPUT_POINTS = 500_000  # per run, for points/s (bounded: a few seconds)
NAIVE_POINTS = 20_000


def per_call_ns(log: Any, calls: int) -> float:
    """Median of per-batch means (batches of 1000 calls): robust to GC and writer bursts."""
    samples = []
    for batch in range(calls // 1000):
        started = time.perf_counter_ns()
        for step in range(batch * 1000, batch * 1000 + 1000):
            log("loss", 0.5, step)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return statistics.median(samples)


def emitter_call_ns(url: str, run: int) -> float:
    with Emitter(f"bench-call-{run}", redis_url=url, handle_sigterm=False) as emitter:
        cost = per_call_ns(emitter.log_metric, CALLS)
        emitter.flush(timeout=120)
    return cost


def floor_call_ns() -> float:
    queue: deque[tuple[Any, ...]] = deque()

    def log(name: str, value: float, step: int) -> None:
        queue.append((name, value, step, None, time.time_ns()))

    return per_call_ns(log, CALLS)


def emitter_points_per_s(url: str, run: int) -> float:
    emitter = Emitter(f"bench-rate-{run}", redis_url=url, handle_sigterm=False)
    started = time.perf_counter()
    for step in range(THROUGHPUT_POINTS):
        emitter.log_metric("loss", 0.5, step)
    emitter.flush(timeout=300)
    elapsed = time.perf_counter() - started
    emitter.close()
    return THROUGHPUT_POINTS / elapsed


def naive_points_per_s(url: str) -> float:
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for step in range(NAIVE_POINTS):
        point = b'{"executionId":"bench-naive","metrics":[{"name":"loss","value":0.5,"step":%d}]}'
        client.xadd("bench:naive", {"resource": point % step})
    return NAIVE_POINTS / (time.perf_counter() - started)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str]) -> int:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        calls, rates, floors, naive = [], [], [], []
        for run in range(RUNS):
            floors.append(floor_call_ns())
            calls.append(emitter_call_ns(server.url, run))
            client.flushall()
            rates.append(emitter_points_per_s(server.url, run))
            client.flushall()
            naive.append(naive_points_per_s(server.url))
    result = {
        "log_metric_ns": spread(calls),
        "deque_append_floor_ns": spread(floors),
        "points_per_s_packed": spread(rates),
        "points_per_s_one_xadd_per_point": spread(naive),
    }
    rate = result["points_per_s_packed"]["median"]
    naive_rate = result["points_per_s_one_xadd_per_point"]["median"]
    floor = result["deque_append_floor_ns"]["median"]
    print(f"{'measure':34} {'median':>12} {'min':>12} {'max':>12}")
    for name, row in result.items():
        print(f"{name:34} {row['median']:12,.0f} {row['min']:12,.0f} {row['max']:12,.0f}")
    print(
        f"log_metric vs deque floor: x{result['log_metric_ns']['median'] / floor:.1f}; "
        f"packed vs one XADD per point: x{rate / naive_rate:.1f}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "runs": RUNS}
    RESULTS.write_text(json.dumps({"machine": machine, **result}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main([]))
