"""Remote-API benchmark (issue 16, point 4): the relay against a remote, rate-limited AI API.

The API is the reference server as a cloud API looks from a cluster (WORKLOADS.md): 50-200 ms
latency per request (uniform, seeded), a tenant-wide limit of RATE_LIMIT requests/s (a token
bucket over all clients; beyond it 429 with ``Retry-After: 1``) and 1 % 503s. A W4 producer
(bench/workloads.py) writes LOAD x RATE_LIMIT x 1000 points/s into SHARDS streams for
``seconds``: more than the API could take in half-empty bodies, less than it takes in full ones.
1 worker process, then 3 (each owning a share of the streams), drain them; each run has a fresh
API, fresh streams and fresh workers. Every configuration runs in turn in the same repetition:

- ``adaptive``: the relay's defaults (AIMD limit on bodies in flight, paced by rate once the API
  refused some; queued bodies fill, and while the API throttles a body that can grow waits to
  fill even with a slot free);
- ``unpaced``: the AIMD limit on whole in-flight steps, without pacing or holding bodies to fill
  (the relay's defaults before that);
- ``fixed``: 16 in flight, queued bodies fill (the adaptive limit off);
- ``before``: 16 in flight, every body alone (both off: the relay before this change).

Figures, from the API's side (it records every PATCH and the timestamp of every point it
stored; a point's timestamp is its production time): accepted points/s and 429s from WARMUP_S
on until production ends; points per accepted PATCH; 429s per minute over the whole run and
after the warm-up; produce -> accepted latency (p50, p99, max) of the points produced after the
warm-up (those still undelivered when production ended included: the run waits for them).
Medians (min, max) over the repetitions. The worker child runs the daemon as ``metricrelay
worker`` does, with the mode's ``ConcurrencyConfig`` (settings cannot choose it yet).
Run: ``python -m bench remote_api`` (``--runs``, ``--seconds``; ``--tiny`` is the tests' size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from bench.remote_children import API_FLAGS, MODES, api_child, worker_child
from bench.report import spread, write_results
from bench.workloads import W4
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

RESULTS = Path(__file__).parent / "results" / "remote_api.json"
SHARDS = 6  # 3 workers own 2 each; 1 worker owns all 6 (their slots shared by the process)
TICK_S = 0.05  # the producer's pacing step
DRAIN_S = 45.0  # at most this long after production for the backlog to be delivered
RUN_BUDGET_S = 120.0  # no run takes longer than this, whatever the sizes say


@dataclass(frozen=True)
class Sizes:
    runs: int = 3
    seconds: float = 40.0  # of production, per run
    warmup: float = 10.0  # "after the first seconds"
    rate_limit: float = 20.0  # requests/s of the API
    load: float = 0.9  # offered points/s, as a share of rate_limit x 1000
    workers: tuple[int, ...] = (1, 3)
    modes: tuple[str, ...] = ("adaptive", "unpaced", "fixed", "before")


STANDARD = Sizes()
TINY = Sizes(runs=1, seconds=4.0, warmup=1.0, load=0.2, modes=("adaptive",))


# --- one run -----------------------------------------------------------------------------------


def produce(client: redis.Redis, keys: Keys, w4: W4, rate: float, seconds: float) -> dict[str, int]:
    """W4 entries at ``rate`` points/s for ``seconds``; what was written."""
    written = {"entries": 0, "points": 0, "invalid": 0}
    started = time.monotonic()
    tick = 0
    while (elapsed := time.monotonic() - started) < seconds:
        pipe = client.pipeline(transaction=False)
        while written["points"] < rate * min(elapsed + TICK_S, seconds):
            entry = w4.entry()
            pipe.xadd(keys.route("default", entry.execution).events, {"resource": entry.data})
            written["entries"] += 1
            written["points"] += entry.points
            written["invalid"] += entry.invalid
        pipe.execute()
        tick += 1
        pause = started + tick * TICK_S - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the producer to its rate
    return written


def fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as reply:  # loopback only
        answer: dict[str, Any] = json.load(reply)
        return answer


def drain(api_url: str, expected: int, deadline: float) -> float:
    """Poll until the API stored ``expected`` points (or the deadline); when it did, or None."""
    while time.monotonic() < deadline:
        if fetch(f"{api_url}/_bench/progress")["points"] >= expected:
            return time.time()
        time.sleep(0.25)  # polling the API for the backlog to be delivered, bounded
    return float("nan")


def one_run(server: RedisServer, sizes: Sizes, mode: str, workers: int, run: int) -> dict[str, Any]:
    tag = f"{mode}-{workers}-{run}-{time.time_ns() % 10**6}"
    keys = Keys(f"bench-{tag}", SHARDS)
    client = redis.Redis.from_url(server.url)
    w4 = W4(tag, seed=run + 1)
    offered = sizes.load * sizes.rate_limit * 1000
    budget = time.monotonic() + RUN_BUDGET_S
    with api_child(*API_FLAGS, "--rate-limit", f"{sizes.rate_limit:g}", "--seed", str(run)) as api:
        children = [
            worker_child(server.url, api, keys.prefix, shards=SHARDS, mode=mode, number=n)
            for n in range(workers)
        ]
        try:
            for child in children:
                child.wait_started(budget)
            started = time.time()
            written = produce(client, keys, w4, offered, sizes.seconds)
            ended = time.time()
            expected = written["points"]
            drained = drain(api, expected, min(budget, time.monotonic() + DRAIN_S))
            report = fetch(f"{api}/_bench/report?since={started + sizes.warmup}&until={ended}")
        finally:
            for child in children:
                child.stop()
    client.close()
    return summarise(
        sizes, report, written, started=started, ended=ended, drained=drained, offered=offered
    )


def summarise(
    sizes: Sizes,
    report: dict[str, Any],
    written: dict[str, int],
    *,
    started: float,
    ended: float,
    drained: float,
    offered: float,
) -> dict[str, Any]:
    steady = ended - started - sizes.warmup
    whole, after = report["whole"], report["steady"]
    return {
        "offered_points_per_s": offered,
        "points_per_s": after["points"] / steady,
        "points_per_request": after["points"] / max(1, after["accepted"]),
        "requests_per_s": after["requests"] / steady,
        "throttled_per_min": 60 * whole["throttled"] / (ended - started),
        "throttled_per_min_after_warmup": 60 * after["throttled"] / steady,
        "throttled_share_after_warmup": after["throttled"] / max(1, after["requests"]),
        "unavailable_503": whole["unavailable"],
        "latency_p50_ms": report["latency_ms"]["p50"],
        "latency_p99_ms": report["latency_ms"]["p99"],
        "latency_max_ms": report["latency_ms"]["max"],
        "drain_after_production_s": drained - ended,
        "points_written": written["points"],
        "points_stored": report["stored"],
        "invalid_items_written": written["invalid"],
    }


# --- the report --------------------------------------------------------------------------------


FIGURES = (
    ("points_per_s", "points/s accepted (after warm-up)", 0),
    ("points_per_request", "points per accepted PATCH", 0),
    ("requests_per_s", "PATCHes/s (all answers)", 1),
    ("throttled_per_min", "429s per minute (whole run)", 0),
    ("throttled_per_min_after_warmup", "429s per minute (after warm-up)", 0),
    ("throttled_share_after_warmup", "429 share of PATCHes (after)", 3),
    ("latency_p50_ms", "produce->accepted p50 ms", 0),
    ("latency_p99_ms", "produce->accepted p99 ms", 0),
    ("drain_after_production_s", "drain after production s", 1),
)


def measure(sizes: Sizes) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {}
    with RedisServer() as server:
        for run in range(sizes.runs):
            for workers in sizes.workers:
                for mode in sizes.modes:
                    print(
                        f"run {run + 1}/{sizes.runs}: {workers} worker(s), {mode} ...", flush=True
                    )
                    row = one_run(server, sizes, mode, workers, run)
                    rows.setdefault(f"{mode}/{workers}", []).append(row)
    out: dict[str, Any] = {"configurations": {}}
    for name, runs in rows.items():
        summary = {key: spread([r[key] for r in runs]) for key, _, _ in FIGURES}
        out["configurations"][name] = {**summary, "runs": runs}
    for workers in sizes.workers:
        adaptive, fixed = rows.get(f"adaptive/{workers}"), rows.get(f"fixed/{workers}")
        if adaptive and fixed:
            out.setdefault("ratios", {})[f"{workers}_workers_adaptive_over_fixed_429s"] = (
                statistics.median(r["throttled_per_min_after_warmup"] for r in adaptive)
                / max(1e-9, statistics.median(r["throttled_per_min_after_warmup"] for r in fixed))
            )
    return out


def print_table(out: dict[str, Any], sizes: Sizes) -> None:
    ceiling = sizes.rate_limit * 1000
    print(
        f"API: {API_FLAGS}, rate limit {sizes.rate_limit:g}/s (ceiling {ceiling:,.0f} points/s "
        f"at 1000 per PATCH); offered {sizes.load * ceiling:,.0f} points/s (W4)"
    )
    names = list(out["configurations"])
    print(f"{'median (min-max)':34}" + "".join(f"{name:>22}" for name in names))
    for key, label, digits in FIGURES:
        cells = []
        for name in names:
            cell = out["configurations"][name][key]
            text = f"{cell['median']:,.{digits}f}"
            if sizes.runs > 1:
                text += f" ({cell['min']:,.{digits}f}-{cell['max']:,.{digits}f})"
            cells.append(f"{text:>22}")
        print(f"{label:34}" + "".join(cells))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench remote_api")
    parser.add_argument("--tiny", action="store_true", help="smoke size (tests); means nothing")
    parser.add_argument("--runs", type=int, help="repetitions (default 3)")
    parser.add_argument("--seconds", type=float, help="production per run (default 40)")
    parser.add_argument("--modes", help="comma-joined, of adaptive,unpaced,fixed,before")
    parser.add_argument("--workers", help="comma-joined worker counts (default 1,3)")
    parser.add_argument(
        "--load", type=float, help="offered points/s as a share of the API's ceiling (default 0.9)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else STANDARD
    if args.runs:
        sizes = replace(sizes, runs=args.runs)
    if args.seconds:
        sizes = replace(sizes, seconds=min(args.seconds, RUN_BUDGET_S - DRAIN_S - 15))
    if args.modes:
        sizes = replace(sizes, modes=tuple(m for m in args.modes.split(",") if m in MODES))
    if args.load:
        sizes = replace(sizes, load=args.load)
    if args.workers:
        sizes = replace(sizes, workers=tuple(int(n) for n in args.workers.split(",")))
    out = measure(sizes)
    print_table(out, sizes)
    write_results(args.out, out, runs=sizes.runs, sizes=sizes.__dict__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
