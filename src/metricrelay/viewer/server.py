"""Running ``metricrelay view``: listen, say where, serve until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Final

from aiohttp import web

from metricrelay.settings import Settings
from metricrelay.viewer.app import build_app

__all__ = ["serve"]

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S: Final = 5.0


async def serve(
    settings: Settings, host: str, port: int, *, ready: Callable[[str], None] | None = None
) -> None:
    """Serve on ``host``/``port`` (0: a free one); ``ready`` gets the URL once it listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        log.info("signal %d: stopping (send it again to exit at once)", signum)
        for sig in signals:
            loop.remove_signal_handler(sig)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    runner = web.AppRunner(
        build_app(settings), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}/"
        log.info("run viewer for %s at %s", settings.api.api_url, url)
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
