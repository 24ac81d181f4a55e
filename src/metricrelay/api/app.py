"""The aiohttp application of the reference server: routes, middlewares, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from aiohttp import web

from metricrelay.aiapi.errors import error_middleware
from metricrelay.api.asyncstore import AsyncStore
from metricrelay.api.config import ApiConfig
from metricrelay.api.executions import get_executions
from metricrelay.api.faults import FaultInjector, fault_middleware
from metricrelay.api.handlers import (
    STATE,
    ServerState,
    delete_metrics,
    expect_body,
    get_meta,
    get_metrics,
    get_stats,
    issue_token,
    patch_metrics,
    patch_tracking,
)
from metricrelay.api.stats import Stats, stats_middleware
from metricrelay.api.tokens import TokenIssuer
from metricrelay.api.viewer import add_viewer_routes

__all__ = ["STATE", "build_app"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_app(
    config: ApiConfig,
    *,
    wall_clock: Callable[[], datetime] = _utc_now,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """A ready application; the store opens on startup and closes on cleanup.

    ``wall_clock`` stamps points and resources, ``monotonic`` ages tokens: both injectable.
    """
    faults = config.faults
    seed = faults.seed if faults.seed is not None else random.SystemRandom().randrange(2**32)
    stats = Stats(seed)
    injector = FaultInjector(faults, stats, monotonic)
    tokens = TokenIssuer(
        expires_in=config.token_expires_in,
        client_id=config.client_id,
        client_secret=config.client_secret,
        static_token=config.static_token,
        monotonic=monotonic,
    )
    # outermost first: count what went out, after refusals were rendered
    app = web.Application(
        middlewares=[stats_middleware(stats), error_middleware, fault_middleware(injector)]
    )
    app[STATE] = ServerState(config, tokens, injector, stats, wall_clock)
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    router = app.router
    for path, handler in (("/v2/lm/metrics", patch_metrics), ("/api/v1/metrics", patch_tracking)):
        router.add_route("PATCH", path, handler, expect_handler=expect_body)
    router.add_get("/v2/lm/metrics", get_metrics, allow_head=False)
    router.add_delete("/v2/lm/metrics", delete_metrics)
    router.add_get("/v2/lm/meta", get_meta, allow_head=False)
    router.add_get(r"/v2/lm/executions{count:(/\$count)?}", get_executions, allow_head=False)
    router.add_post("/oauth/token", issue_token)
    router.add_get("/_stats", get_stats, allow_head=False)
    add_viewer_routes(router)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    config = state.config
    state.db = await AsyncStore.open(config.db)
    watch = asyncio.create_task(state.stats.loop.run(), name="metricrelay-api-loop-watch")
    faults = config.faults
    if faults.any_random or faults.delayed or faults.rate_limit:
        latency = f"{faults.latency_ms:g}"
        if faults.latency_max_ms is not None:
            latency += f"-{faults.latency_max_ms:g}"
        limit = "none" if faults.rate_limit is None else f"{faults.rate_limit:g}/s"
        log.info(
            "fault injection on %s: fail %.3f, throttle %.3f, reset %.3f (%s), latency %s ms, "
            "rate limit %s (burst %d), seed %d",
            ",".join(sorted(faults.methods)),
            faults.fail_rate,
            faults.throttle_rate,
            faults.reset_rate,
            faults.reset_when,
            latency,
            limit,
            faults.burst,
            state.stats.seed,
        )
    try:
        yield
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await state.db.close()
        state.db = None
