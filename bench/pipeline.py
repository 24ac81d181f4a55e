"""Micro-benchmark of the worker's pure hot path: decode+validate, and coalesce+encode.

Two shapes of traffic: single-point entries (one metric per XADD, the worst case) and packed
entries (200 metrics per entry, what the Emitter writes). The baseline in the same process is
``orjson.loads`` of the same bytes: the floor any validating decoder sits on.
Run: ``python -m bench pipeline`` (or ``make bench``).
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from metricrelay.codec import EncodedFragment, decode_entry
from metricrelay.relay.batching import Coalescer

RESULTS = Path(__file__).parent / "results" / "pipeline.json"
RUNS = 5
POINTS = 100_000  # per run and shape: bounded in count, a few seconds in all


def make_entries(points_per_entry: int) -> list[bytes]:
    entries = []
    for start in range(0, POINTS, points_per_entry):
        metrics = [
            {
                "name": "training_loss" if step % 2 else "accuracy",
                "value": 1.0 / (step + 1),
                "step": step,
                "timestamp": f"2026-11-23T12:{(step // 60) % 60:02d}:{step % 60:02d}.123456Z",
                "labels": [{"name": "rank", "value": str(step % 8)}],
            }
            for step in range(start, start + points_per_entry)
        ]
        fragment = {"executionId": f"exec-{start % 7:04d}", "metrics": metrics}
        entries.append(orjson.dumps(fragment))
    return entries


def timed(work: Callable[[], object]) -> float:
    gc.collect()
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def decode_all(entries: list[bytes]) -> list[EncodedFragment]:
    out = []
    for raw in entries:
        fragment = decode_entry(raw, entry_ms=1_795_435_200_000, default_resource_group="default")
        assert fragment.fragment is not None and not fragment.problems
        out.append(fragment.fragment)
    return out


def coalesce_all(fragments: list[EncodedFragment]) -> int:
    coalescer = Coalescer()
    sent = 0
    for number, fragment in enumerate(fragments):
        coalescer.add(f"{number}-0", fragment, 0.0)
        for body in coalescer.take_ready():
            sent += len(body.encode())
            coalescer.complete(body)
    for body in coalescer.flush():
        sent += len(body.encode())
        coalescer.complete(body)
    return sent


def measure(label: str, per_entry: int) -> list[dict[str, Any]]:
    entries = make_entries(per_entry)
    fragments = decode_all(entries)
    stages: dict[str, Callable[[], object]] = {
        "orjson.loads (baseline)": lambda: [orjson.loads(raw) for raw in entries],
        "decode+validate": lambda: decode_all(entries),
        "coalesce+encode": lambda: coalesce_all(fragments),
    }
    rows = []
    for stage, work in stages.items():
        rates = sorted(POINTS / timed(work) for _ in range(RUNS))
        rows.append(
            {
                "traffic": label,
                "stage": stage,
                "points_per_s_median": statistics.median(rates),
                "points_per_s_min": rates[0],
                "points_per_s_max": rates[-1],
                "us_per_point": 1e6 / statistics.median(rates),
            }
        )
    baseline = rows[0]["points_per_s_median"]
    for row in rows:
        row["vs_baseline"] = row["points_per_s_median"] / baseline
    return rows


def main(argv: list[str]) -> int:
    rows = measure("single-point entries", 1) + measure("packed entries (200/entry)", 200)
    print(
        f"{'traffic':28} {'stage':24} {'points/s':>11} {'min':>11} {'max':>11} {'µs/pt':>7} x base"
    )
    for r in rows:
        print(
            f"{r['traffic']:28} {r['stage']:24} {r['points_per_s_median']:11,.0f} "
            f"{r['points_per_s_min']:11,.0f} {r['points_per_s_max']:11,.0f} "
            f"{r['us_per_point']:7.2f} {r['vs_baseline']:.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "runs": RUNS}
    RESULTS.write_text(json.dumps({"machine": machine, "points": POINTS, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main([]))
