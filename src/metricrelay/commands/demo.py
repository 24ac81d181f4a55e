"""``metricrelay demo``: a simulated distributed training run pushed through the relay's core.

Today it runs the pure pipeline in process: fragments as ranks would write them to the stream,
decoded and validated as the worker does, coalesced into PATCH bodies within every API limit.
It prints what would be sent per execution and what would be dead-lettered, and why.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from typing import Any

import orjson

from metricrelay.batching import Body, Coalescer
from metricrelay.codec import decode_entry
from metricrelay.timestamps import from_epoch_ms

__all__ = ["register", "run", "simulate"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="push a simulated training run through validation and batching"
    )
    parser.add_argument("--executions", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.set_defaults(handler=run)


def _point(name: str, value: float, step: int, stamp: str, rank: int) -> dict[str, Any]:
    labels = [{"name": "rank", "value": str(rank)}]
    return {"name": name, "value": value, "step": step, "timestamp": stamp, "labels": labels}


def _rank_entry(execution: int, rank: int, steps: range, start_ms: int) -> dict[str, Any]:
    """One stream entry of one rank: 50 steps of loss and accuracy, packed."""
    metrics = []
    for step in steps:
        loss = 2.0 * math.exp(-step / (120 + 30 * execution)) + 0.01 * rank
        stamp = from_epoch_ms(start_ms + step * 100)
        metrics.append(_point("training_loss", loss, step, stamp, rank))
        metrics.append(_point("accuracy", 1 - loss / 2.5, step, stamp, rank))
    if rank == 0 and steps.start == 0:  # one poisoned point, to show dead-lettering
        metrics.append({"name": "training_loss", "value": 1.0, "step": -1})
    tags = [{"name": "host", "value": f"node-{execution}"}]
    return {"executionId": f"demo-run-{execution:02d}", "metrics": metrics, "tags": tags}


def simulate(executions: int, ranks: int, steps: int, start_ms: int) -> list[tuple[str, bytes]]:
    """Stream entries as ``(id, resource)``, as ranks would XADD them, ending with a report."""
    documents = []
    for execution in range(executions):
        for rank in range(ranks):
            for first in range(0, steps, 50):
                chunk = range(first, min(first + 50, steps))
                documents.append(_rank_entry(execution, rank, chunk, start_ms))
        report = orjson.dumps({"accuracy": 0.9, "per_class": {"cat": 0.93, "dog": 0.88}})
        info = [{"name": "Classification Report", "value": report.decode()}]
        documents.append({"executionId": f"demo-run-{execution:02d}", "customInfo": info})
    return [(f"{start_ms + n}-0", orjson.dumps(doc)) for n, doc in enumerate(documents)]


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    start_ms = int(time.time() * 1000)
    entries = simulate(args.executions, args.ranks, args.steps, start_ms)
    coalescer = Coalescer()
    bodies: list[Body] = []
    dead: Counter[str] = Counter()
    acked = 0
    for entry_id, raw in entries:
        decoded = decode_entry(
            raw, entry_ms=int(entry_id.split("-")[0]), default_resource_group="default"
        )
        for problem in decoded.problems:
            dead[problem.message] += 1
        if decoded.fragment is not None:
            acked += len(coalescer.add(entry_id, decoded.fragment, time.monotonic()))
        bodies += coalescer.take_ready()
    bodies += coalescer.flush()
    for body in bodies:
        acked += len(coalescer.complete(body))
    print("offline preview: the worker, Redis and the reference API arrive in later releases\n")
    print(f"{'execution':14} {'bodies':>6} {'metrics':>8} {'tags':>5} {'custInfo':>8} {'KiB':>8}")
    for execution in sorted({b.execution_id for b in bodies}):
        mine = [b for b in bodies if b.execution_id == execution]
        print(
            f"{execution:14} {len(mine):6} {sum(len(b.metrics) for b in mine):8} "
            f"{sum(len(b.tags) for b in mine):5} {sum(len(b.custom_info) for b in mine):8} "
            f"{sum(b.size for b in mine) / 1024:8.1f}"
        )
    reasons = Counter(str(b.close_reason) for b in bodies)
    print(f"\n{len(entries)} stream entries -> {len(bodies)} PATCH bodies {dict(reasons)}")
    for message, count in dead.items():
        print(f"dead-letter 'invalid' x{count}: {message}")
    print(f"entries acknowledged: {acked}/{len(entries)} in {time.perf_counter() - started:.2f} s")
    return 0 if acked == len(entries) else 1
