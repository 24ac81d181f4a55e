"""Cluster scale benchmark (issue 10): points/s delivered by 1, 2 and 3 worker processes that
share ``METRICRELAY_SHARDS=8`` sharded streams on a local Redis Cluster (3 masters + 3 replicas).

One cluster and one reference API process (in-memory SQLite, no faults) serve every run. A run
writes a backlog of POINTS points (packed entries of POINTS_PER_ENTRY points, EXECUTIONS
executions routed with ``Keys(prefix, 8).route``) under a key prefix of its own, starts k plain
(leased, not ``--burst``) worker processes, polls ``fleet.shard_has_work`` over the 8 shards until
none has work (with a deadline), reads CPU from ``/proc`` and SIGTERMs the workers. It then GETs
every execution from the API and fails (exit code 1) if a single point is missing.

Figures per run:

- ``points_per_s``: POINTS / (drained - the first worker's launch): everything, start-up included;
- ``work_points_per_s``: POINTS / (drained - the first "took shard" log line of any worker):
  nothing can be delivered before a shard is taken, so this is the exact rate once work began;
- ``startup_s`` (launch to first "took shard": interpreter, imports, first lease tick; ``up_s``
  is launch to the last worker's "sharing N shards" line, before that tick) and
  ``handover_s`` (first to last worker's first "took shard": how long until all k work);
- CPU per point of the workers (sum over processes, from their "sharing N shards" line to the
  drain), of the API and of the 6 redis-servers, over the same span.

Every figure is the median (min, max) of RUNS runs. On a small machine the API, 6 redis-servers
and the workers share its cores: the ratio to one worker shows coordination overhead, not the
scale on separate hosts; the CPU per point lets a reader extrapolate (see ``print_table``).
Run: ``python -m bench cluster`` (``make bench``); ``--tiny`` is the smoke size of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.waiting import until

from bench.report import spread, write_results
from bench.worker import (
    TOKEN,
    Api,
    _entry,
    _headers,
    _proc_cpu,
    api_process,
    column,
)
from metricrelay.connection import async_client, sync_client
from metricrelay.devtools import demo_stack
from metricrelay.devtools.demo_stack import ChildProcess
from metricrelay.devtools.embedded_cluster import RedisClusterServer
from metricrelay.keys import Keys, ShardKeys
from metricrelay.relay.fleet import shard_has_work

RESULTS = Path(__file__).parent / "results" / "cluster.json"
SHARDS = 8
LEASE_TTL_S = "4"  # as tests/cluster: a lease tick of 1 s, so start-up and handover are short
RUN_BUDGET_S = 180.0  # no drain may take longer than this, whatever the sizes say
POLL_S = 0.05  # between drain probes (8 XINFO GROUPS over the cluster)
UP = re.compile(r"worker \S+ sharing \d+ shards")
TOOK = re.compile(r"took shard (\S+)")
HANDED = re.compile(r"handing shard ")


@dataclass(frozen=True)
class Sizes:
    runs: int = 3
    points: int = 200_000
    points_per_entry: int = 100
    executions: int = 40
    workers: tuple[int, ...] = (1, 2, 3)


STANDARD = Sizes()
TINY = Sizes(runs=1, points=5_000)


# --- the worker processes ----------------------------------------------------------------------


@dataclass
class ShardWorker:
    """A ``metricrelay worker`` child (demo_stack's); its log lines are timestamped as they arrive
    and its CPU is read the moment it logs that it is up (so interpreter start-up is not
    counted)."""

    name: str
    child: ChildProcess | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    up_at: float | None = None
    cpu_at_up: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    attached: threading.Event = field(default_factory=threading.Event)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.child is not None
        return self.child.process

    def read(self, line: str) -> None:
        """One line of its output, from the thread that reads them."""
        now = time.perf_counter()
        self.attached.wait()  # the child is set (its first line cannot come sooner in practice)
        with self.lock:
            if self.up_at is None and UP.search(line):
                self.cpu_at_up = _proc_cpu(self.process.pid)
                self.up_at = now
            self.lines.append((now, line))

    def matching(self, pattern: re.Pattern[str]) -> list[tuple[float, re.Match[str]]]:
        with self.lock:
            found = [(at, pattern.search(line)) for at, line in self.lines]
        return [(at, match) for at, match in found if match is not None]

    def first_took(self) -> float | None:
        took = self.matching(TOOK)
        return took[0][0] if took else None

    def log_tail(self, count: int = 20) -> str:
        with self.lock:
            return "".join(line for _, line in self.lines[-count:])

    def terminate(self) -> None:
        """SIGTERM, once (a second one makes the worker exit at once, leaving entries pending):
        it drains and releases its leases."""
        assert self.child is not None
        self.child.terminate()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless sent already) and wait; SIGKILL if it hangs."""
        assert self.child is not None
        return self.child.stop(timeout)


def start_shard_worker(
    folder: Path, number: int, redis_url: str, api_url: str, *, name: str, prefix: str
) -> ShardWorker:
    """Worker ``number`` on metricrelay's defaults but the sharding, started the way
    demo_stack starts one (its log in ``folder``)."""
    worker = ShardWorker(name)
    worker.child = demo_stack.start_worker(
        folder,
        number,
        redis_url,
        api_url,
        defaults={},
        on_line=worker.read,
        METRICRELAY_TOKEN=TOKEN,
        METRICRELAY_CONSUMER_NAME=name,
        METRICRELAY_PREFIX=prefix,
        METRICRELAY_SHARDS=str(SHARDS),
        METRICRELAY_LEASE_TTL=LEASE_TTL_S,
    )
    worker.attached.set()
    return worker


# --- the load and the checks -------------------------------------------------------------------


def fill(cluster: RedisClusterServer, keys: Keys, sizes: Sizes, executions: list[str]) -> int:
    """POINTS points, steps 0 … POINTS/EXECUTIONS-1 of each execution, in entries of at most
    POINTS_PER_ENTRY points, round-robin over executions; returns the number of entries."""
    per_execution = sizes.points // len(executions)
    client = sync_client(cluster.url)
    entries = 0
    try:
        pipe = client.pipeline(transaction=False)
        for first in range(0, per_execution, sizes.points_per_entry):
            count = min(sizes.points_per_entry, per_execution - first)
            for execution in executions:
                shard = keys.route("default", execution)
                pipe.xadd(shard.events, {"resource": _entry(execution, first, count)})
                entries += 1
                if len(pipe) >= 500:
                    pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return entries


async def _wait_drained(url: str, shards: list[ShardKeys], workers: list[ShardWorker]) -> float:
    """Poll until no shard has work; the time it was first seen so. Bounded by RUN_BUDGET_S."""
    client = async_client(url)

    async def busy() -> list[str]:
        return [shard.name for shard in shards if await shard_has_work(client, shard)]

    async def drained() -> float | None:
        idle = not await busy()
        now = time.perf_counter()
        if idle:
            return now
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(
                    f"{worker.name} exited with {worker.process.returncode}:\n" + worker.log_tail()
                )
        return None

    try:  # worker processes do the work
        return await until(drained, timeout=RUN_BUDGET_S, interval=POLL_S)
    except TimeoutError:
        left = await busy()
        raise TimeoutError(f"shards {left} still have work after {RUN_BUDGET_S:g}s") from None
    finally:
        await client.aclose()


def _get(api: str, path: str, params: dict[str, str], method: str = "GET") -> bytes:
    request = urllib.request.Request(
        f"{api}/v2/lm/{path}?{urllib.parse.urlencode(params)}", headers=_headers(), method=method
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        body: bytes = reply.read()
    return body


def stored_steps(api: str, executions: list[str]) -> dict[str, Counter[int]]:
    """execution → how often each step is stored (one metric name per execution)."""
    out: dict[str, Counter[int]] = {e: Counter() for e in executions}
    for start in range(0, len(executions), 10):
        chosen = ",".join(executions[start : start + 10])
        body = _get(api, "metrics", {"executionIds": chosen, "$top": "10000"})
        for resource in json.loads(body)["resources"]:
            out[resource["executionId"]].update(m["step"] for m in resource["metrics"])
    return out


def verify(api: str, executions: list[str], per_execution: int) -> int:
    """Raise if any point written is not stored; returns how many were stored twice (which
    at-least-once delivery allows, though the API should store a repeated point once)."""
    wanted = set(range(per_execution))
    twice = 0
    for execution, steps in stored_steps(api, executions).items():
        missing = wanted - set(steps)
        if missing:
            raise RuntimeError(
                f"{execution}: {len(missing)} of {per_execution} points not stored, "
                f"e.g. steps {sorted(missing)[:5]}"
            )
        if set(steps) - wanted:
            raise RuntimeError(f"{execution}: steps stored that nobody wrote")
        twice += sum(steps.values()) - len(steps)
    return twice


def cleanup(cluster: RedisClusterServer, api: str, keys: Keys, executions: list[str]) -> None:
    """Keep the in-memory API and the cluster small between runs."""
    for execution in executions:
        _get(api, "metrics", {"executionId": execution}, method="DELETE")
    client = sync_client(cluster.url)
    try:
        for shard in keys.all_shards():
            client.delete(shard.events)
    finally:
        client.close()


def redis_cpu(cluster: RedisClusterServer) -> float:
    return sum(_proc_cpu(node.process.pid) for node in cluster.nodes if node.process is not None)


# --- one run -----------------------------------------------------------------------------------


def one_run(
    cluster: RedisClusterServer, api: Api, sizes: Sizes, k: int, run: int, *, folder: Path
) -> dict[str, Any]:
    prefix = f"benchc{k}r{run}t{time.time_ns() % 10**8}"
    keys = Keys(prefix, SHARDS)
    executions = [f"{prefix}-{n:02d}" for n in range(sizes.executions)]
    entries = fill(cluster, keys, sizes, executions)
    api_before, redis_before = api.cpu(), redis_cpu(cluster)
    launched = time.perf_counter()
    workers = [
        start_shard_worker(folder, n, cluster.url, api.url, name=f"{prefix}-w{n}", prefix=prefix)
        for n in range(k)
    ]
    try:
        drained = asyncio.run(_wait_drained(cluster.url, keys.all_shards(), workers))
        worker_cpu = sum(_proc_cpu(w.process.pid) - w.cpu_at_up for w in workers)
        api_cpu = api.cpu() - api_before
        redis_cpu_s = redis_cpu(cluster) - redis_before
    finally:
        for worker in workers:  # all at once: a worker still running would take the leases
            worker.terminate()  # the others release, which is shutdown, not the run
        codes = [worker.stop() for worker in workers]
    if any(codes):
        raise RuntimeError(f"workers exited with {codes}:\n{workers[0].log_tail()}")
    if not all(w.up_at is not None for w in workers):
        raise RuntimeError("a worker never logged that it was up")
    took = [w.first_took() for w in workers]
    first_took = min(t for t in took if t is not None)
    twice = verify(api.url, executions, sizes.points // sizes.executions)
    cleanup(cluster, api.url, keys, executions)
    # until the drain: what happens while they shut down is not part of the run
    taken = [len({m.group(1) for at, m in w.matching(TOOK) if at <= drained}) for w in workers]
    handbacks = sum(1 for w in workers for at, _ in w.matching(HANDED) if at <= drained)
    points = sizes.points
    return {
        "points_per_s": points / (drained - launched),
        "work_points_per_s": points / (drained - first_took),
        "seconds": drained - launched,
        "startup_s": first_took - launched,
        # launch until the last worker logged it is up (interpreter, imports, connections); the
        # rest of startup_s is the fleet's first lease tick (METRICRELAY_LEASE_TTL / 4)
        "up_s": max(w.up_at or 0.0 for w in workers) - launched,
        # None: a worker found no shard free before the backlog was gone
        "handover_s": None if None in took else max(t for t in took if t) - first_took,
        "worker_cpu_us_per_point": 1e6 * worker_cpu / points,
        "api_cpu_us_per_point": 1e6 * api_cpu / points,
        "redis_cpu_us_per_point": 1e6 * redis_cpu_s / points,
        "entries": entries,
        "shards_taken": taken,  # per worker, distinct shards it took during the run
        "handbacks": handbacks,
        "stored_twice": twice,
    }


# --- the report --------------------------------------------------------------------------------

NUMERIC = (
    "points_per_s",
    "work_points_per_s",
    "seconds",
    "startup_s",
    "up_s",
    "worker_cpu_us_per_point",
    "api_cpu_us_per_point",
    "redis_cpu_us_per_point",
)


def measure(sizes: Sizes) -> dict[str, Any]:
    if sizes.points % sizes.executions:
        raise ValueError("points must be a multiple of executions")
    out: dict[str, Any] = {"workers": {}}
    with (
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder,
        RedisClusterServer(Path(folder) / "cluster") as cluster,
        api_process() as api,
    ):
        for k in sizes.workers:
            rows = []
            for run in range(sizes.runs):
                print(f"{k} worker(s), run {run + 1}/{sizes.runs} ...", flush=True)
                rows.append(one_run(cluster, api, sizes, k, run, folder=Path(folder)))
            summary: dict[str, Any] = {name: column(rows, name) for name in NUMERIC}
            handovers = [r["handover_s"] for r in rows if r["handover_s"] is not None]
            summary["handover_s"] = spread(handovers) if handovers else None
            summary["runs"] = rows
            out["workers"][str(k)] = summary
    one = out["workers"]["1"]
    for summary in out["workers"].values():
        summary["ratio_to_one"] = summary["points_per_s"]["median"] / one["points_per_s"]["median"]
        summary["work_ratio_to_one"] = (
            summary["work_points_per_s"]["median"] / one["work_points_per_s"]["median"]
        )
    worker_us = one["worker_cpu_us_per_point"]["median"]
    api_us = one["api_cpu_us_per_point"]["median"]
    redis_us = one["redis_cpu_us_per_point"]["median"]
    out["extrapolation"] = {
        "one_worker_on_own_core_points_per_s": 1e6 / worker_us,
        "api_on_own_core_points_per_s": 1e6 / api_us,
        "redis_on_one_core_points_per_s": 1e6 / redis_us,
    }
    return out


def print_table(out: dict[str, Any]) -> None:
    print(
        f"{'workers':>7} {'points/s median':>16} {'min':>9} {'max':>9} {'ratio':>6} "
        f"{'work pts/s':>11} {'ratio':>6} {'start s':>8} {'hand s':>7} "
        f"{'wkr µs/pt':>10} {'api µs/pt':>10} {'redis µs/pt':>11}  shards taken"
    )
    for k, s in out["workers"].items():
        hand = "-" if s["handover_s"] is None else f"{s['handover_s']['median']:.2f}"
        print(
            f"{k:>7} {s['points_per_s']['median']:16,.0f} {s['points_per_s']['min']:9,.0f} "
            f"{s['points_per_s']['max']:9,.0f} {s['ratio_to_one']:6.2f} "
            f"{s['work_points_per_s']['median']:11,.0f} {s['work_ratio_to_one']:6.2f} "
            f"{s['startup_s']['median']:8.2f} {hand:>7} "
            f"{s['worker_cpu_us_per_point']['median']:10.2f} "
            f"{s['api_cpu_us_per_point']['median']:10.2f} "
            f"{s['redis_cpu_us_per_point']['median']:11.2f}  "
            + " ".join("/".join(map(str, r["shards_taken"])) for r in s["runs"])
        )
    ex = out["extrapolation"]
    cpus = os.cpu_count()
    print(
        f"\nOn this {cpus}-core machine the API, 6 redis-servers and the workers share {cpus} "
        "cores, so the ratio to one worker\nshows the coordination overhead and what parallelism "
        "is left, not the scale on separate hosts. Measured CPU per\npoint with one worker: "
        f"worker {1e6 / ex['one_worker_on_own_core_points_per_s']:.2f} µs, API "
        f"{1e6 / ex['api_on_own_core_points_per_s']:.2f} µs, all redis-servers "
        f"{1e6 / ex['redis_on_one_core_points_per_s']:.2f} µs. With each worker on its own "
        f"core,\nthroughput ≈ k x {ex['one_worker_on_own_core_points_per_s']:,.0f} points/s "
        f"until the API (one process: ≈ {ex['api_on_own_core_points_per_s']:,.0f} points/s "
        f"per core)\nor Redis (≈ {ex['redis_on_one_core_points_per_s']:,.0f} points/s per "
        "core, spread over the masters holding the shards) saturates."
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cluster")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke size (tests); figures mean nothing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else STANDARD
    try:
        out = measure(sizes)
    except (RuntimeError, TimeoutError) as error:
        print(f"cluster benchmark failed: {error}", file=sys.stderr)
        return 1
    print_table(out)
    sized = {**sizes.__dict__, "shards": SHARDS, "lease_ttl_s": float(LEASE_TTL_S)}
    topology = "Redis Cluster, 3 masters + 3 replicas, on loopback"
    write_results(args.out, out, runs=sizes.runs, sizes=sized, topology=topology)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
