"""The processes of the remote-API benchmark (bench/remote_api.py): the reference API with a
recorder, and the relay daemon with a chosen delivery limit.

``python -m bench.remote_children api FLAG...`` runs ``metricrelay api FLAG...`` (the same
parser and application) plus two things a benchmark needs: every PATCH's answer with the time it
was given, and every stored point's production time (its timestamp) with the time it was stored;
``GET /_bench/progress`` and ``GET /_bench/report?since=&until=`` read them.
``python -m bench.remote_children worker MODE`` runs the daemon as ``metricrelay worker`` does
(settings from METRICRELAY_*), with the ``ConcurrencyConfig`` of MODE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from bench.report import percentile
from bench.worker import TOKEN, _drain_lines
from metricrelay.relay.concurrency import ConcurrencyConfig

API_FLAGS: Final = ("--latency-ms", "50-200", "--fail-rate", "0.01", "--retry-after", "1")
MODES: Final = {
    "adaptive": ConcurrencyConfig(),
    "unpaced": ConcurrencyConfig(pacing=False, fill_while_throttled=False),
    "fixed": ConcurrencyConfig(adaptive=False),
    "before": ConcurrencyConfig(adaptive=False, fill_queued=False),
}
LISTENING: Final = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
STARTED: Final = re.compile(r"worker \S+ sharing ")
PATCH_PATH: Final = "/v2/lm/metrics"


# --- in the benchmark's process ----------------------------------------------------------------


@contextlib.contextmanager
def api_child(*flags: str) -> Iterator[str]:
    """The recording API on a free loopback port; yields its URL."""
    command = [sys.executable, "-m", "bench.remote_children", "api", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--token", TOKEN, *flags], stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_drain_lines, args=(process.stderr, lines), daemon=True).start()
    try:
        while not (match := LISTENING.search(lines.get(timeout=30))):
            pass
        yield match.group(1)
    finally:
        _stop(process)


@dataclass
class WorkerChild:
    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def wait_started(self, deadline: float) -> None:
        while not STARTED.search(self.lines.get(timeout=max(0.1, deadline - time.monotonic()))):
            pass

    def stop(self) -> None:
        _stop(self.process)


def worker_child(
    redis_url: str, api_url: str, prefix: str, *, shards: int, mode: str, number: int
) -> WorkerChild:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
    if "BENCH_LIMIT_LOG" in env:
        env["BENCH_LIMIT_LOG"] += f".{prefix}.{number}"
    env |= {
        "METRICRELAY_REDIS_URL": redis_url,
        "METRICRELAY_API_URL": f"{api_url}/v2",
        "METRICRELAY_TOKEN": TOKEN,
        "METRICRELAY_CONSUMER_NAME": f"{prefix}-w{number}",
        "METRICRELAY_PREFIX": prefix,
        "METRICRELAY_SHARDS": str(shards),
        "METRICRELAY_LEASE_TTL": "4",  # a lease tick of 1 s: the shards are shared out quickly
    }
    command = [sys.executable, "-m", "bench.remote_children", "worker", mode]
    child = WorkerChild(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    threading.Thread(
        target=_drain_lines, args=(child.process.stderr, child.lines), daemon=True
    ).start()
    return child


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the API child -----------------------------------------------------------------------------


class Recorder:
    """What the API answered and stored, with when; the event loop is the only writer."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, int]] = []  # every PATCH: (when answered, status)
        self.bodies: list[tuple[float, int]] = []  # every stored body: (when, points)
        self.produced = array("d")  # every stored point: its timestamp...
        self.stored = array("d")  # ...and when it was stored

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "PATCH" and request.path == PATCH_PATH:
            self.answers.append((time.time(), response.status))
        return response

    def wrap_store(self, store: Any) -> None:
        original = store.patch

        async def patch(group: str, resource: Any, received: str) -> Any:
            outcome = await original(group, resource, received)
            now = time.time()
            metrics = resource.get("metrics", [])
            self.bodies.append((now, len(metrics)))
            for metric in metrics:
                self.produced.append(datetime.fromisoformat(metric["timestamp"]).timestamp())
                self.stored.append(now)
            return outcome

        store.patch = patch

    def report(self, since: float, until: float) -> dict[str, Any]:
        def counts(low: float, high: float) -> dict[str, int]:
            statuses = [status for at, status in self.answers if low <= at < high]
            return {
                "requests": len(statuses),
                "accepted": sum(200 <= s < 300 for s in statuses),
                "throttled": statuses.count(429),
                "unavailable": statuses.count(503),
                "points": sum(n for at, n in self.bodies if low <= at < high),
            }

        latencies = [
            1000 * (stored - produced)
            for produced, stored in zip(self.produced, self.stored, strict=True)
            if since <= produced < until
        ] or [float("nan")]
        return {
            "whole": counts(0.0, float("inf")),
            "steady": counts(since, until),
            "stored": len(self.stored),
            "latency_ms": {
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies),
                "points": len(latencies),
            },
        }


async def serve_api(argv: list[str]) -> None:
    from metricrelay.api.app import build_app  # noqa: PLC0415 - only the API child needs them
    from metricrelay.api.handlers import STATE  # noqa: PLC0415
    from metricrelay.cli import build_parser  # noqa: PLC0415
    from metricrelay.commands.api import config_from_args  # noqa: PLC0415

    config = config_from_args(build_parser().parse_args(["api", *argv]))
    recorder = Recorder()
    app = build_app(config)
    app.middlewares.insert(0, recorder.middleware)  # outermost: it sees every answer given

    async def wrap(app: web.Application) -> None:  # after the store opened (cleanup_ctx)
        recorder.wrap_store(app[STATE].store)

    async def progress(request: web.Request) -> web.Response:
        return web.json_response({"points": len(recorder.stored)})

    async def report(request: web.Request) -> web.Response:
        since, until = float(request.query["since"]), float(request.query["until"])
        return web.json_response(recorder.report(since, until))

    app.on_startup.append(wrap)
    app.router.add_get("/_bench/progress", progress)
    app.router.add_get("/_bench/report", report)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_worker(mode: str) -> int:
    from metricrelay.logs import configure_logging  # noqa: PLC0415
    from metricrelay.relay.service import run_worker as run  # noqa: PLC0415
    from metricrelay.settings import Settings  # noqa: PLC0415

    configure_logging("INFO", "text")
    logging.getLogger("metricrelay.relay.worker").setLevel(logging.WARNING)  # a line per body
    if os.environ.get("BENCH_LIMIT_LOG"):  # where to write the delivery limit's changes
        limit_log = logging.FileHandler(os.environ["BENCH_LIMIT_LOG"])
        limit_log.setFormatter(logging.Formatter("%(created).3f %(message)s"))
        logger = logging.getLogger("metricrelay.relay.concurrency")
        logger.addHandler(limit_log)
        logger.setLevel(logging.DEBUG)
    asyncio.run(run(Settings.from_sources(), concurrency=MODES[mode]))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "api":
        asyncio.run(serve_api(sys.argv[2:]))
    elif sys.argv[1] == "worker":
        raise SystemExit(run_worker(sys.argv[2]))
