"""PATCH throughput of the reference server (``metricrelay api``) with 1000-metric bodies.

The server runs as its own process (``python -m metricrelay api --port 0``) so that client and
server do not share a GIL; an aiohttp client sends pre-encoded bodies over loopback with a fixed
number of requests in flight. Each scenario starts a fresh server and makes RUNS timed runs of at
most BODIES bodies (and at most BUDGET_S seconds each). The server's own event-loop watch
(``/_stats`` → ``loop.max_lag_ms``) shows whether storing blocked the loop.
Run: ``python -m bench api_patch`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.worker import TOKEN, api_process
from metricrelay.codec import RESOURCE_ADAPTER

RESULTS = Path(__file__).parent / "results" / "api_patch.json"
RUNS = 3
BODIES = 120  # per run: 120,000 points
BUDGET_S = 20.0  # per run, whatever BODIES says
POINTS_PER_BODY = 1000


@dataclass(frozen=True)
class Scenario:
    label: str
    db: str  # ":memory:" or "file"
    concurrency: int
    duplicates: bool = False  # resend bodies the server already stored


SCENARIOS = (
    Scenario("memory, 1 in flight", ":memory:", 1),
    Scenario("memory, 4 in flight", ":memory:", 4),
    Scenario("file (WAL), 4 in flight", "file", 4),
    Scenario("file, 4 in flight, all duplicates", "file", 4, duplicates=True),
)


def make_bodies(run: int) -> list[bytes]:
    """BODIES distinct bodies; every run its own executions, so nothing is a duplicate."""
    bodies = []
    for number in range(BODIES):
        base = number * POINTS_PER_BODY
        metrics = [
            {
                "name": ("training_loss", "accuracy", "lr", "grad_norm")[step % 4],
                "value": 1.0 / (base + step + 1),
                "step": base + step,
                "timestamp": f"2026-11-23T12:{(step // 60) % 60:02d}:{step % 60:02d}.{run:06d}Z",
                "labels": [{"name": "rank", "value": str(step % 8)}],
            }
            for step in range(POINTS_PER_BODY)
        ]
        execution = f"bench-{run:02d}-{number % 8:04d}"
        bodies.append(orjson.dumps({"executionId": execution, "metrics": metrics}))
    return bodies


@contextmanager
def server(db: str) -> Iterator[str]:
    """``metricrelay api`` on a free loopback port (bench/worker.py starts it); yields its URL."""
    with api_process("--db", db) as api:
        yield api.url


async def send_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    """Send the bodies with ``concurrency`` in flight; (elapsed, per-request seconds)."""
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "AI-Resource-Group": "default",
        "Content-Type": "application/merge-patch+json",
    }
    latencies: list[float] = []
    pending = iter(bodies)
    deadline = time.perf_counter() + BUDGET_S
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(f"{url}/", connector=connector, headers=headers) as session:

        async def sender() -> None:
            for body in pending:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                async with session.patch("v2/lm/metrics", data=body) as response:
                    await response.read()
                    if response.status != 204:
                        raise RuntimeError(f"PATCH answered {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


async def server_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_stats") as response:
        return await response.json()  # type: ignore[no-any-return]


def measure(scenario: Scenario, workdir: Path) -> dict[str, Any]:
    db = str(workdir / f"{scenario.label.split(',')[0]}-{scenario.concurrency}.db")
    rates: list[tuple[float, float]] = []
    latencies: list[float] = []
    with server(db if scenario.db == "file" else ":memory:") as url:
        warm = make_bodies(99)
        # a few bodies warm the server up; the duplicates scenario first stores all it resends
        warmup = warm if scenario.duplicates else warm[: scenario.concurrency * 2]
        asyncio.run(send_all(url, warmup, scenario.concurrency))
        for run in range(RUNS):
            bodies = warm if scenario.duplicates else make_bodies(run)
            elapsed, seen = asyncio.run(send_all(url, bodies, scenario.concurrency))
            rates.append((len(seen) / elapsed, len(seen) * POINTS_PER_BODY / elapsed))
            latencies += seen
        stats = asyncio.run(server_stats(url))
    bodies_s = sorted(r[0] for r in rates)
    points_s = sorted(r[1] for r in rates)
    latencies.sort()
    return {
        "scenario": scenario.label,
        "bodies_per_s_median": statistics.median(bodies_s),
        "bodies_per_s_min": bodies_s[0],
        "bodies_per_s_max": bodies_s[-1],
        "points_per_s_median": statistics.median(points_s),
        "points_per_s_min": points_s[0],
        "points_per_s_max": points_s[-1],
        "latency_ms_p50": 1000 * latencies[len(latencies) // 2],
        "latency_ms_p99": 1000 * latencies[int(len(latencies) * 0.99)],
        "server_loop_max_lag_ms": stats["loop"]["max_lag_ms"],
        "points_stored": stats["storage"].get("points_stored", 0),
        "points_duplicate": stats["storage"].get("points_duplicate", 0),
    }


def parse_only() -> dict[str, Any]:
    """The floor inside the server: validating the same bodies, no HTTP, no SQLite."""
    bodies = make_bodies(0)
    rates = []
    for _ in range(RUNS):
        started = time.perf_counter()
        for body in bodies:
            RESOURCE_ADAPTER.validate_json(body)
        rates.append(len(bodies) / (time.perf_counter() - started))
    rates.sort()
    return {
        "scenario": "validate only (in-process)",
        "bodies_per_s_median": statistics.median(rates),
        "bodies_per_s_min": rates[0],
        "bodies_per_s_max": rates[-1],
        "points_per_s_median": statistics.median(rates) * POINTS_PER_BODY,
        "points_per_s_min": rates[0] * POINTS_PER_BODY,
        "points_per_s_max": rates[-1] * POINTS_PER_BODY,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'scenario':36} {'bodies/s':>9} {'min':>7} {'max':>7} {'points/s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'lag ms':>7}"
    )
    for r in rows:
        extra = (
            f"{r['latency_ms_p50']:7.1f} {r['latency_ms_p99']:7.1f} "
            f"{r['server_loop_max_lag_ms']:7.1f}"
            if "latency_ms_p50" in r
            else f"{'-':>7} {'-':>7} {'-':>7}"
        )
        print(
            f"{r['scenario']:36} {r['bodies_per_s_median']:9.1f} {r['bodies_per_s_min']:7.1f} "
            f"{r['bodies_per_s_max']:7.1f} {r['points_per_s_median']:10,.0f} {extra}"
        )


def main(argv: list[str]) -> int:
    body_bytes = len(make_bodies(0)[0])
    with tempfile.TemporaryDirectory(prefix="metricrelay-bench-") as workdir:
        rows = [parse_only()] + [measure(s, Path(workdir)) for s in SCENARIOS]
    print(f"{POINTS_PER_BODY} metrics per body ({body_bytes:,} bytes), {RUNS} runs, median")
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "runs": RUNS,
        "bodies_per_run": BODIES,
        "points_per_body": POINTS_PER_BODY,
        "body_bytes": body_bytes,
    }
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
