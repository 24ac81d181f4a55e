"""The worker's HTTP listener: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` (probes)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from metricrelay.relay.observability import WorkerMetrics
from metricrelay.relay.stray import find_stray, waiting
from metricrelay.relay.stream import GroupInfo
from metricrelay.relay.tasks import cancel_until_done

__all__ = ["Endpoints", "ProbeConfig"]

log = logging.getLogger(__name__)

# What a probe must not wait for longer than: kubelet's default probe timeout is 1 s.
REDIS_PROBE_TIMEOUT: Final = 0.8


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: the kernel picks one; see Endpoints.port
    ready_api_failure_seconds: float = 60.0
    tick: float = 0.5  # how often the watchdog checks the event loop
    stale_after: float = 10.0  # a watchdog tick older than this: /healthz fails
    group_interval: float = 5.0  # how often lag and pending are read from Redis
    # How often the streams of other shard layouts are looked for (a SCAN); 0: never.
    stray_interval: float = 60.0
    prefix: str = "metricrelay"
    in_play: tuple[str, ...] = ()  # the streams this worker's layouts name (not stray)


class GroupSource(Protocol):
    """Where probes look: one stream (:class:`EventStream`) or every shard (a Fleet)."""

    redis: Any

    async def group_info(self) -> GroupInfo | None: ...


class Endpoints:
    """Serves the worker's metrics and probes; runs the loop watchdog and the group poller."""

    def __init__(self, metrics: WorkerMetrics, stream: GroupSource, config: ProbeConfig) -> None:
        self.metrics = metrics
        self.stream = stream
        self.config = config
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_tick = 0.0
        self._was_ready: bool | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # No access log: probes every few seconds would drown the batch lines.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._last_tick = asyncio.get_running_loop().time()
        self._tasks = [
            asyncio.create_task(self._watch_loop(), name="loop watchdog"),
            asyncio.create_task(self._poll_group(), name="group poller"),
        ]
        if self.config.stray_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll_stray(), name="stray poller"))
        log.info("metrics and probes on http://%s:%d", self.config.host, self.port)

    async def close(self) -> None:
        await cancel_until_done(self._tasks)
        self._tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ background tasks

    async def _watch_loop(self) -> None:
        """Tick on the event loop; a late tick means the loop was busy (or blocked) that long."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.config.tick)
            self._last_tick = loop.time()
            self.metrics.loop_lag.observe(max(0.0, self._last_tick - before - self.config.tick))

    async def _poll_group(self) -> None:
        """Lag and pending every few seconds, not per scrape: scrapers must not set Redis's pace."""
        while True:
            try:
                async with asyncio.timeout(self.config.group_interval):
                    info = await self.stream.group_info()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("consumer group not readable: %s", type(exc).__name__)
                info = None
            self.metrics.set_group(info)
            await asyncio.sleep(self.config.group_interval)

    async def _poll_stray(self) -> None:
        """Entries in streams no worker reads; a warning when they appear, and when they change."""
        said: tuple[str, ...] = ()
        while True:
            try:
                async with asyncio.timeout(self.config.stray_interval):
                    stray = await find_stray(
                        self.stream.redis, self.config.prefix, self.config.in_play
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("stray streams not readable: %s", type(exc).__name__)
                self.metrics.stray_entries.set(math.nan)
            else:
                self.metrics.stray_entries.set(waiting(stray))
                named = tuple(f"{one.key} ({one.length})" for one in stray if one.kind == "events")
                if named and named != said:
                    log.warning(
                        "entries wait in streams of another shard layout, which no worker reads "
                        "(a producer with another METRICRELAY_SHARDS?): %s",
                        ", ".join(named),
                    )
                said = named
            await asyncio.sleep(self.config.stray_interval)

    # ------------------------------------------------------------------ handlers

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        age = asyncio.get_running_loop().time() - self._last_tick
        watching = bool(self._tasks) and not self._tasks[0].done()
        ok = watching and age < self.config.stale_after
        document = {"status": "ok" if ok else "stalled", "last_tick_seconds_ago": round(age, 3)}
        return web.json_response(document, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = {"redis": await self._check(self.stream.redis.ping)}
        if checks["redis"] == "ok":
            checks["group"] = await self._check(self._group_exists)
        else:
            checks["group"] = "not checked"
        if self.metrics.redis_is_full():  # reachable, but refusing writes: nothing moves
            checks["redis"] = "full (maxmemory reached): writes refused"
        failing = self.metrics.api.failing_for()
        limit = self.config.ready_api_failure_seconds
        checks["api"] = "ok" if failing <= limit else f"failing for {failing:.0f}s"
        failed = [name for name, outcome in checks.items() if outcome not in ("ok", "not checked")]
        ready = not failed
        if ready != self._was_ready:  # logged once per change, not once per probe
            log.log(logging.INFO if ready else logging.WARNING, "readiness: %s", checks)
            self._was_ready = ready
        document = {"status": "ready" if ready else "not ready", "failed": failed, **checks}
        return web.json_response(document, status=200 if ready else 503)

    async def _group_exists(self) -> bool:
        return await self.stream.group_info() is not None

    @staticmethod
    async def _check(probe: Callable[[], Awaitable[bool]]) -> str:
        """Say "ok" when ``probe`` answers truthily in time, else why not, in a few words: never
        the exception's text, which may quote the Redis URL and its password."""
        try:
            async with asyncio.timeout(REDIS_PROBE_TIMEOUT):
                answer = await probe()
        except TimeoutError:
            return "timeout"
        except (RedisError, OSError) as exc:
            return f"unreachable ({type(exc).__name__})"
        return "ok" if answer else "missing"
