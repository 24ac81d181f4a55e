"""Worker benchmark: one ``metricrelay worker --burst`` process against the reference API process,
on the workloads of /work/shared/WORKLOADS.md (bench/workloads.py).

Every figure is the median (min, max) of RUNS runs. Each run fills a fresh stream on a private
redis-server, starts the worker as its own process and times it from its start-up log line ("worker
... reading") to its exit; CPU is the child's own (``/proc/<pid>/stat`` at that line, ``wait4``
rusage at exit), so interpreter start-up is excluded. Scenarios:

- W1 (Emitter-shaped entries), W2 (one point per entry), W3 (200 points per entry) and W4 (W2 and
  W3 mixed with tag changes, customInfo and invalid items), each with every point timestamped to
  the microsecond and labelled by rank; each against the reference API (``metricrelay api``,
  whose CPU per point bounds the rate on this machine) and again against a sink that only counts
  (bench/sink.py: 204 to every request), where the worker runs at its own speed;
- next to each, in the same run, the bare loop over the very same entries, read through a second
  consumer group: asyncio redis-py (hiredis) XREADGROUP COUNT 1000 + ``orjson.loads`` + XACK —
  its CPU per point and the worker's over it;
- the baseline a user has today: one PATCH per point, sequentially (aiohttp, keep-alive);
- peak RSS (VmHWM) with a W4 backlog of 1M points (and 5M with ``--full``);
- produce → accepted latency of W2 entries at half the measured W2 rate (see ``latency_run``);
- the API with 5% 503s and 2% 429s (``Retry-After: 0``), on W2.

Producer figures are ``bench/producer.py``'s (``bench/results/producer.json``), not repeated here.
Run: ``python -m bench worker`` (``make bench``); ``python -m bench worker --full`` (``make
bench-full``); ``--tiny`` is the smoke size used by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import redis
import redis.asyncio as redis_asyncio
from tests.support.waiting import until_sync

from bench import workloads
from bench.report import percentile, spread, write_results
from bench.workloads import Entry
from metricrelay.devtools import demo_stack
from metricrelay.devtools.demo_stack import ChildProcess
from metricrelay.devtools.embedded import RedisServer
from metricrelay.keys import Keys

RESULTS = Path(__file__).parent / "results" / "worker.json"
TOKEN = "bench-token"
SINK = "sink"  # api_process(SINK): bench/sink.py in place of the reference API
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
STARTED = re.compile(r"worker \S+ sharing ")
KEYS = Keys()
CEILING_GROUP = "bench-ceiling"
EXECUTIONS = 16  # executions the load is spread over (bodies of one execution go one at a time)
TICK_S = 0.02  # the latency producer's pacing step
RUN_BUDGET_S = 180.0  # no worker run may take longer than this, whatever the sizes say
FAULTS = ["--fail-rate", "0.05", "--throttle-rate", "0.02", "--retry-after", "0", "--seed", "8"]


@dataclass(frozen=True)
class Sizes:
    runs: int = 3
    w1_points: int = 1_000_000
    w2_points: int = 200_000
    w3_points: int = 1_000_000
    w4_points: int = 1_000_000
    memory_points: tuple[int, ...] = (1_000_000,)
    baseline_points: int = 3000
    latency_seconds: float = 8.0
    fault_points: int = 200_000


STANDARD = Sizes()
FULL = replace(STANDARD, memory_points=(1_000_000, 5_000_000), latency_seconds=20.0)
TINY = Sizes(
    runs=1,
    w1_points=1600,
    w2_points=400,
    w3_points=2000,
    w4_points=2000,
    memory_points=(2000,),
    baseline_points=20,
    latency_seconds=1.0,
    fault_points=400,
)
# workload name → (its generator, the Sizes field with its point count)
WORKLOADS = {
    "W1": (workloads.w1, "w1_points"),
    "W2": (workloads.w2, "w2_points"),
    "W3": (workloads.w3, "w3_points"),
    "W4": (workloads.w4, "w4_points"),
}


# --- the processes -----------------------------------------------------------------------------


def _drain_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@dataclass
class Api:
    url: str
    pid: int

    def cpu(self) -> float:
        return _proc_cpu(self.pid)


@contextmanager
def api_process(*extra: str) -> Iterator[Api]:
    """``metricrelay api`` (in-memory SQLite) on a free loopback port, with its pid; with
    ``extra == (SINK,)`` the sink that only counts (bench/sink.py) instead."""
    if extra == (SINK,):
        command = [sys.executable, "-m", "bench.sink", "--port", "0"]
    else:
        command = [sys.executable, "-m", "metricrelay", "api", "--port", "0", "--token", TOKEN]
        command += extra
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_drain_lines, args=(process.stderr, lines), daemon=True).start()
    try:
        while not (match := LISTENING.search(lines.get(timeout=30))):
            pass
        yield Api(match.group(1), process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


@contextmanager
def api_server(*extra: str) -> Iterator[str]:
    """``metricrelay api`` (in-memory SQLite) on a free loopback port; yields its URL."""
    with api_process(*extra) as api:
        yield api.url


@dataclass
class WorkerProcess:
    """One ``metricrelay worker`` child; ``started``/``cpu_at_start`` once it logged its start."""

    child: ChildProcess
    lines: queue.Queue[str]
    started: float = 0.0
    cpu_at_start: float = 0.0

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    def terminate(self) -> None:
        """SIGTERM, once: it drains and exits."""
        self.child.terminate()

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not STARTED.search(self.lines.get(timeout=max(0.1, deadline - time.monotonic()))):
            pass
        self.started = time.perf_counter()
        self.cpu_at_start = _proc_cpu(self.process.pid)

    def reap(self, timeout: float) -> tuple[float, float, int]:
        """Wait for exit: (when, CPU seconds since start, peak RSS bytes from rusage)."""

        peak = 0

        def exited() -> tuple[float, int, Any] | None:
            # os.wait4 both reaps and gives this child's own rusage; WNOHANG, so that a hung
            # worker cannot hang the benchmark past its budget
            nonlocal peak
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if not pid:
                peak = max(peak, _vm_hwm(self.process.pid))
            return (time.perf_counter(), status, usage) if pid else None

        try:
            ended, status, usage = until_sync(exited, timeout=timeout, interval=0.005)
        except TimeoutError:
            self.child.kill()
            raise RuntimeError("worker did not finish within its budget") from None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        if self.child.stop() != 0:  # ended: this closes its log
            tail = self.child.log_text()[-2000:]
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{tail}")
        cpu = usage.ru_utime + usage.ru_stime - self.cpu_at_start
        # Not rusage's ru_maxrss: Linux starts a child's at its parent's RSS at fork time, so it
        # would report the benchmark's own size. VmHWM is the peak of the worker's own memory
        # since its exec, read while it runs (it holds no more at exit than at its last read).
        return ended, cpu, peak


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone between the wait and the read
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start_worker(
    server: RedisServer, api_url: str, name: str, *, burst: bool, number: int = 0
) -> WorkerProcess:
    """Worker ``number`` on metricrelay's defaults (demo_stack's way of starting one), its log in
    the server's folder; its output lines are read as they come."""
    lines: queue.Queue[str] = queue.Queue()
    child = demo_stack.start_worker(
        server.directory,
        number,
        server.url,
        api_url,
        burst=burst,
        defaults={},
        on_line=lines.put,
        METRICRELAY_TOKEN=TOKEN,
        METRICRELAY_CONSUMER_NAME=name,
    )
    return WorkerProcess(child, lines)


# --- the load ----------------------------------------------------------------------------------


def _entry(execution: str, first_step: int, points: int) -> bytes:
    """W2-shaped points of ``execution`` at steps ``first_step`` … (one per step, the 8 names in
    turn, rank labels, a timestamp of each point's own)."""
    rng = random.Random(first_step)
    now = time.time()
    metrics = []
    for i in range(points):
        point = workloads.point(rng, i, now + i * 1e-6, i % workloads.RANKS)
        point["step"] = first_step + i
        metrics.append(point)
    return orjson.dumps({"executionId": execution, "metrics": metrics})


def fill(client: redis.Redis, entries: list[Entry]) -> None:
    """A fresh stream of ``entries``; the group and the ceiling group are created first, from 0,
    so both see every entry."""
    client.delete(KEYS.events)
    client.xgroup_create(KEYS.events, KEYS.group, id="0", mkstream=True)
    client.xgroup_create(KEYS.events, CEILING_GROUP, id="0")
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(KEYS.events, {"resource": entry.data})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


async def _ceiling(url: str, entries: int) -> tuple[float, float, float]:
    """The bare loop over the ceiling group: (elapsed seconds, its CPU seconds, entries read)."""
    client = redis_asyncio.Redis.from_url(url)
    done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while done < entries and time.perf_counter() - started < RUN_BUDGET_S:
        reply = await client.xreadgroup(CEILING_GROUP, "c", {KEYS.events: ">"}, count=1000)
        if not reply:
            break
        rows: list[tuple[bytes, dict[bytes, bytes]]] = cast(Any, reply)[0][1]
        for _, fields in rows:
            with contextlib.suppress(orjson.JSONDecodeError):  # W4's NaN: not JSON
                orjson.loads(fields[b"resource"])
        await client.xack(KEYS.events, CEILING_GROUP, *[entry_id for entry_id, _ in rows])
        done += len(rows)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await client.aclose()
    return elapsed, cpu, done


def drain_with_workers(server: RedisServer, api: str, tag: str, workers: int) -> dict[str, float]:
    """Run ``workers`` burst workers over the filled stream; rates, CPU and peak RSS."""
    children = [
        start_worker(server, api, f"{tag}-w{n}", burst=True, number=n) for n in range(workers)
    ]
    for child in children:
        child.wait_started()
    reaped = [child.reap(RUN_BUDGET_S) for child in children]
    started = min(child.started for child in children)
    elapsed = max(ended for ended, _, _ in reaped) - started
    return {
        "seconds": elapsed,
        "cpu_seconds": sum(cpu for _, cpu, _ in reaped),
        "peak_rss": max(rss for _, _, rss in reaped),
    }


# --- the scenarios -----------------------------------------------------------------------------


def throughput(
    server: RedisServer, sizes: Sizes, workload: str, *extra: str, points: int = 0
) -> list[dict[str, float]]:
    """RUNS runs of the worker (and the bare loop, over the same entries) on a fresh stream of
    ``workload`` entries each."""
    make, field = WORKLOADS[workload]
    points = points or getattr(sizes, field)
    client = redis.Redis.from_url(server.url)
    rows = []
    with api_process(*extra) as process:
        api = process.url
        for run in range(sizes.runs):
            tag = f"{workload}-{run}-{time.time_ns() % 10**6}"
            entries = make(tag, points)
            valid = sum(entry.points for entry in entries)
            fill(client, entries)
            api_cpu = process.cpu()
            got = drain_with_workers(server, api, tag, 1)
            api_cpu = process.cpu() - api_cpu  # the server's CPU while the worker ran
            if client.xpending(KEYS.events, KEYS.group)["pending"]:
                raise RuntimeError("the worker left entries pending")
            seconds, bare_cpu, read = asyncio.run(_ceiling(server.url, len(entries)))
            cpu_us = 1e6 * got["cpu_seconds"] / valid
            bare_us = 1e6 * bare_cpu / valid
            rows.append(
                {
                    "points_per_s": valid / got["seconds"],
                    "entries_per_s": len(entries) / got["seconds"],
                    "cpu_us_per_point": cpu_us,
                    "peak_rss_mb": got["peak_rss"] / 2**20,
                    "api_cpu_us_per_point": 1e6 * api_cpu / valid,
                    "bare_points_per_s": valid * read / len(entries) / seconds,
                    "bare_cpu_us_per_point": bare_us,
                    "worker_over_bare_rate": (valid / got["seconds"])
                    / (valid * read / len(entries) / seconds),
                    "bare_over_worker_cpu": bare_us / cpu_us,
                }
            )
            asyncio.run(_delete_executions(api, tag))
    client.delete(KEYS.events)
    return rows


async def _delete_executions(api: str, tag: str) -> None:
    """Keep the in-memory server small between runs."""
    async with aiohttp.ClientSession(headers=_headers()) as session:
        for number in range(EXECUTIONS):
            params = {"executionId": f"bench-{tag}-{number:02d}"}
            async with session.delete(f"{api}/v2/lm/metrics", params=params) as response:
                await response.read()


def _headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "AI-Resource-Group": "default",
        "Content-Type": "application/merge-patch+json",
    }


async def _baseline(api: str, points: int, run: int) -> float:
    """One PATCH per point, one after another, as per-log-call SDK use does; points/s."""
    async with aiohttp.ClientSession(headers=_headers()) as session:
        started = time.perf_counter()
        sent = 0
        for step in range(points):
            body = _entry(f"bench-baseline-{run}", step, 1)
            async with session.patch(f"{api}/v2/lm/metrics", data=body) as response:
                await response.read()
                if response.status != 204:
                    raise RuntimeError(f"PATCH answered {response.status}")
            sent += 1
            if time.perf_counter() - started > RUN_BUDGET_S / 4:
                break
        return sent / (time.perf_counter() - started)


def baseline(sizes: Sizes) -> list[float]:
    with api_server() as api:
        return [
            asyncio.run(_baseline(api, sizes.baseline_points, run)) for run in range(sizes.runs)
        ]


# a probe is tagged so that one GET (tagFilters=probe) finds them all
_PROBE = (
    b'{"executionId":"%s","metrics":[{"name":"probe","value":1}],'
    b'"tags":[{"name":"probe","value":"1"}]}'
)


def latency_run(
    server: RedisServer, api: str, rate: float, seconds: float, run: int
) -> list[float]:
    """Produce single-point entries at ``rate`` for ``seconds`` into EXECUTIONS executions, plus
    one probe per tick: a single-point entry in an execution of its own. A probe's latency is the
    API's ``createdAt`` of its execution (the server's wall clock when that PATCH was handled)
    minus the wall clock just before its XADD was sent. Probes are the worst case of the
    load: alone in their body, they always wait the full linger. Returns latencies in seconds."""
    client = redis.Redis.from_url(server.url)
    client.delete(KEYS.events)
    child = start_worker(server, api, f"latency-{run}", burst=False)
    child.wait_started()
    produced: dict[str, float] = {}
    per_tick = max(1, round(rate * TICK_S))
    started = time.perf_counter()
    step = 0
    tick = 0
    while time.perf_counter() - started < seconds:
        pipe = client.pipeline(transaction=False)
        for _ in range(per_tick):
            execution = f"bench-lat{run}-{step % EXECUTIONS:02d}"
            pipe.xadd(KEYS.events, {"resource": _entry(execution, step, 1)})
            step += 1
        probe = f"probe-{run}-{tick:05d}"
        pipe.xadd(KEYS.events, {"resource": _PROBE % probe.encode()})
        produced[probe] = time.time()
        pipe.execute()
        tick += 1
        pause = started + tick * TICK_S - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the producer to the target rate
    achieved = step / (time.perf_counter() - started)

    def delivered() -> bool:
        group = next(
            g for g in client.xinfo_groups(KEYS.events) if g["name"] == KEYS.group.encode()
        )
        return not group["pending"] and not group.get("lag")

    try:
        until_sync(delivered, timeout=60, interval=0.05)
    except TimeoutError:
        print("  (the backlog was not delivered within 60 s)")
    child.terminate()
    child.reap(60)
    stored = asyncio.run(_created_at(api))
    if achieved < rate * 0.5:
        print(f"  (latency producer reached only {achieved:,.0f}/s of {rate:,.0f}/s)")
    return [stored[probe] - at for probe, at in produced.items() if probe in stored]


async def _created_at(api: str) -> dict[str, float]:
    out: dict[str, float] = {}
    params = {"tagFilters": "probe", "$select": "tags", "$top": "10000"}
    async with (
        aiohttp.ClientSession(headers=_headers()) as session,
        session.get(f"{api}/v2/lm/metrics", params=params) as response,
    ):
        for resource in (await response.json())["resources"]:
            created = datetime.fromisoformat(resource["createdAt"].replace("Z", "+00:00"))
            out[resource["executionId"]] = created.astimezone(UTC).timestamp()
    return out


def latency(server: RedisServer, sizes: Sizes, rate: float) -> list[list[float]]:
    runs = []
    for run in range(sizes.runs):
        with api_server() as api:  # a fresh server: GET lists only this run's resources
            runs.append(latency_run(server, api, rate, sizes.latency_seconds, run))
    return runs


# --- the report --------------------------------------------------------------------------------


def column(rows: list[dict[str, float]], name: str) -> dict[str, float]:
    return spread([row[name] for row in rows])


def measure(sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with RedisServer() as server:
        for section, extra in (("workloads", ()), ("sink", (SINK,))):
            out[section] = {}
            for workload in WORKLOADS:
                print(f"{workload} ({'sink' if extra else 'reference API'}) ...", flush=True)
                rows = throughput(server, sizes, workload, *extra)
                cell = out[section][workload] = {k: column(rows, k) for k in rows[0]}
                print("  " + ", ".join(f"{k} {v['median']:,.3f}" for k, v in cell.items()))
        print("baseline: one PATCH per point ...", flush=True)
        out["baseline_points_per_s"] = spread(baseline(sizes))
        out["memory"] = {}
        for points in sizes.memory_points:
            print(f"memory: {points:,}-point W4 backlog ...", flush=True)
            if points == sizes.w4_points:
                out["memory"][str(points)] = out["workloads"]["W4"]["peak_rss_mb"]
            else:
                rows = throughput(server, replace(sizes, runs=1), "W4", points=points)
                out["memory"][str(points)] = column(rows, "peak_rss_mb")
        rate = out["workloads"]["W2"]["points_per_s"]["median"] / 2
        print(f"latency at {rate:,.0f} points/s ...", flush=True)
        lat = latency(server, sizes, rate)
        out["latency"] = {
            "rate_points_per_s": rate,
            "probes": sum(len(r) for r in lat),
            "p50_ms": spread([1000 * percentile(r, 0.5) for r in lat]),
            "p99_ms": spread([1000 * percentile(r, 0.99) for r in lat]),
        }
        print("under faults (W2) ...", flush=True)
        faulty = throughput(server, sizes, "W2", *FAULTS, points=sizes.fault_points)
        out["faults"] = {k: column(faulty, k) for k in faulty[0]}
    w2_rate = out["workloads"]["W2"]["points_per_s"]["median"]
    baseline_rate = out["baseline_points_per_s"]["median"]
    out["ratios"] = {
        **{
            f"{name}_over_baseline": cell["points_per_s"]["median"] / baseline_rate
            for name, cell in out["workloads"].items()
        },
        "faults_over_no_faults": out["faults"]["points_per_s"]["median"] / w2_rate,
    }
    return out


def print_table(out: dict[str, Any]) -> None:
    def row(label: str, cell: dict[str, float]) -> None:
        digits = 3 if cell["median"] < 10 else 1  # ratios and CPU µs need more than one digit
        print(
            f"{label:44} {cell['median']:12,.{digits}f} {cell['min']:12,.{digits}f} "
            f"{cell['max']:12,.{digits}f}"
        )

    print(f"{'measure':44} {'median':>12} {'min':>12} {'max':>12}")
    for section, against in (("workloads", "API"), ("sink", "sink")):
        for name, cell in out[section].items():
            for measure in (
                "points_per_s",
                "cpu_us_per_point",
                "bare_points_per_s",
                "bare_cpu_us_per_point",
                "worker_over_bare_rate",
                "bare_over_worker_cpu",
                "api_cpu_us_per_point",
                "peak_rss_mb",
            ):
                if section == "workloads" or measure != "api_cpu_us_per_point":
                    row(f"{name} ({against}): {measure}", cell[measure])
    row("baseline: one PATCH per point, points/s", out["baseline_points_per_s"])
    for points, cell in out["memory"].items():
        row(f"peak RSS MB, {int(points):,}-point W4 backlog", cell)
    lat = out["latency"]
    row(f"latency p50 ms at {lat['rate_points_per_s']:,.0f}/s", lat["p50_ms"])
    row(f"latency p99 ms ({lat['probes']} probes)", lat["p99_ms"])
    row("faults (W2, 5% 503, 2% 429): points_per_s", out["faults"]["points_per_s"])
    row("faults: cpu_us_per_point", out["faults"]["cpu_us_per_point"])
    print("ratios: " + ", ".join(f"{k} x{v:.2f}" for k, v in out["ratios"].items()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench worker")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="5M-point backlog, longer latency run")
    size.add_argument(
        "--tiny", action="store_true", help="smoke size (tests); figures mean nothing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL if args.full else STANDARD
    out = measure(sizes)
    print_table(out)
    write_results(args.out, out, runs=sizes.runs, sizes=sizes.__dict__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
