"""Micro-benchmark of the worker's pure hot path: decode+validate, and coalesce+encode.

On the workloads of /work/shared/WORKLOADS.md (W1 Emitter-shaped, W2 one point per entry, W3 200
points per entry, W4 mixed with invalid items), POINTS points per run, median (min, max) of RUNS.
Each decoder is measured on the same bytes beside ``orjson.loads`` (the floor any validating
decoder sits on): pydantic-core (codec.py's path: TypedDicts with their validators, every item
encoded one by one), msgspec's pass alone (wholeentry.read_checked: valid entries kept as a run
of their own bytes) and the worker's intake (wholeentry.read: the C recogniser _entryscan for
plain metrics entries, then msgspec's pass); anything they decline falls back to the pydantic
path, as in the worker.
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
from typing import Any, Literal

import orjson

from bench import workloads
from metricrelay import wholeentry
from metricrelay.codec import EncodedFragment, decode_entry, whole_fragment
from metricrelay.relay.batching import Coalescer

RESULTS = Path(__file__).parent / "results" / "pipeline.json"
RUNS = 5
POINTS = 100_000  # per run and shape: bounded in count, a few seconds in all


WORKLOADS: dict[str, Callable[[str, int], list[workloads.Entry]]] = {
    "W1": workloads.w1,
    "W2": workloads.w2,
    "W3": workloads.w3,
    "W4": workloads.w4,
}


def timed(work: Callable[[], object]) -> float:
    """Seconds of ``work`` with the collector off, as timeit does: every stage keeps all it
    makes, and the worker tunes its collector (service.py) so that it does not rescan them."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started
    finally:
        gc.enable()


DecodePath = Literal["pydantic", "msgspec", "intake"]


def decode_all(entries: list[bytes], *, path: DecodePath) -> list[EncodedFragment]:
    """Each entry as the worker's intake makes it (``intake``: the native pass, else msgspec's,
    else codec.py's), with msgspec's pass alone before codec.py, or through codec.py alone."""
    out: list[EncodedFragment] = []
    for raw in entries:
        fragment = None
        if path == "intake":
            fragment = whole_fragment(raw, "default")
        elif path == "msgspec" and (whole := wholeentry.read_checked(raw)) is not None:
            group, execution, run, count, tags, infos = whole
            fragment = EncodedFragment(group or "default", execution, [], tags, infos, run, count)
        if fragment is None:
            fragment = decode_entry(
                raw, entry_ms=1_795_435_200_000, default_resource_group="default"
            ).fragment
        if fragment is not None:
            out.append(fragment)
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


def measure(label: str) -> list[dict[str, Any]]:
    made = WORKLOADS[label]("pipeline", POINTS)
    entries = [entry.data for entry in made]
    points = sum(entry.points for entry in made)
    fragments = decode_all(entries, path="intake")
    stages: dict[str, Callable[[], object]] = {
        "orjson.loads (baseline)": lambda: [orjson.loads(raw) for raw in entries],
        "decode: pydantic-core": lambda: decode_all(entries, path="pydantic"),
        "decode: msgspec pass": lambda: decode_all(entries, path="msgspec"),
        "decode: native + msgspec (intake)": lambda: decode_all(entries, path="intake"),
        "coalesce+encode": lambda: coalesce_all(fragments),
    }
    rows: list[dict[str, Any]] = []
    for stage, work in stages.items():
        rates = sorted(points / timed(work) for _ in range(RUNS))
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
    rows = [row for label in WORKLOADS for row in measure(label)]
    print(f"{'':4} {'stage':34} {'points/s':>11} {'min':>11} {'max':>11} {'µs/pt':>7} x base")
    for r in rows:
        print(
            f"{r['traffic']:4} {r['stage']:34} {r['points_per_s_median']:11,.0f} "
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
