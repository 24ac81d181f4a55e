"""A training loop through a Redis outage (issue 18): step time before, during and after, and
every point in the stream afterwards, in step order.

One process trains for BEFORE_S, then the private redis-server stops for OUTAGE_S (the Emitter's
writer spools to disk), starts again on the same port, and training goes on for AFTER_S; each
step does STEP_WORK_S of CPU work and logs W1's call (8 metrics, a ``rank`` label) with the
Emitter's default settings. Reported: the median and p99 step time of each phase, the slowest
``log_metrics`` call, what was spooled, and whether the stream holds every point in step order
once ``flush`` returned. Run: ``python -m bench outage`` (``--tiny``: a short smoke run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.workloads import NAMES
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys
from metricrelay.producer.emitter import Emitter

RESULTS = Path(__file__).parent / "results" / "outage.json"
EXECUTION = "bench-outage"


@dataclass(frozen=True)
class Sizes:
    before_s: float = 10.0
    outage_s: float = 60.0
    after_s: float = 10.0
    step_work_s: float = 0.005


STANDARD = Sizes()
TINY = Sizes(before_s=0.5, outage_s=1.0, after_s=0.5)


def _work(seconds: float) -> None:
    """The training step's own CPU work."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _phase(run: Emitter, sizes: Sizes, seconds: float, first: int) -> tuple[list[float], float]:
    """Steps for ``seconds`` from step ``first``: their times and the slowest log call."""
    times: list[float] = []
    slowest = 0.0
    end = time.monotonic() + seconds
    step = first
    while time.monotonic() < end:
        started = time.perf_counter()
        _work(sizes.step_work_s)
        called = time.perf_counter()
        run.log_metrics({name: 1.0 / (step + 1) for name in NAMES}, step=step, labels={"rank": "0"})
        slowest = max(slowest, time.perf_counter() - called)
        times.append(time.perf_counter() - started)
        step += 1
    return times, slowest


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "steps": len(times),
        "median_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def _stream_steps(url: str) -> list[int]:
    key = Keys().route("default", EXECUTION).events
    client = redis.Redis.from_url(url)
    try:
        entries: Any = client.xrange(key)
        return [
            metric["step"]
            for _, fields in entries
            for metric in orjson.loads(fields[b"resource"])["metrics"]
        ]
    finally:
        client.close()


def measure(sizes: Sizes) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as folder,
        RedisServer(Path(folder) / "redis", appendonly="always") as server,
    ):
        run = Emitter(EXECUTION, redis_url=server.url, spool_dir=str(Path(folder) / "spool"))
        before, slow_before = _phase(run, sizes, sizes.before_s, 0)
        server.stop()
        during, slow_during = _phase(run, sizes, sizes.outage_s, len(before))
        spooled = run.spooled
        server.start()  # the same port: the emitter's URL still points at it
        after, slow_after = _phase(run, sizes, sizes.after_s, len(before) + len(during))
        run.flush(timeout=120)
        run.close()
        steps = len(before) + len(during) + len(after)
        got = _stream_steps(server.url)
    return {
        "phases": {
            "before": _summary(before),
            "outage": _summary(during),
            "after": _summary(after),
        },
        "slowest_log_call_ms": 1000 * max(slow_before, slow_during, slow_after),
        "spooled_fragments_at_outage_end": spooled,
        "points": steps * len(NAMES),
        "every_point_in_step_order": got == [s for s in range(steps) for _ in NAMES],
        "outage_over_before_median": statistics.median(during) / statistics.median(before),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench outage")
    parser.add_argument("--tiny", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else STANDARD
    out = measure(sizes)
    for phase, cell in out["phases"].items():
        print(
            f"{phase:8} {cell['steps']:7d} steps  median {cell['median_ms']:.3f} ms  "
            f"p99 {cell['p99_ms']:.3f} ms"
        )
    print(
        f"outage / before (median step): x{out['outage_over_before_median']:.3f}; slowest "
        f"log_metrics {out['slowest_log_call_ms']:.2f} ms; spooled "
        f"{out['spooled_fragments_at_outage_end']} fragments; {out['points']:,} points, every "
        f"one in step order: {out['every_point_in_step_order']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sizes": sizes.__dict__, **out}, indent=2))
    print(f"wrote {args.out}")
    return 0 if out["every_point_in_step_order"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
