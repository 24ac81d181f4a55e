"""Running the application: on the current loop, until a signal, or in a background thread."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from metricrelay.api.app import build_app
from metricrelay.api.config import ApiConfig

__all__ = ["BackgroundServer", "RunningServer", "serve", "start_server"]

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S: Final = 5.0
STARTUP_TIMEOUT_S: Final = 30.0


@dataclass(slots=True)
class RunningServer:
    """A started server; ``url`` has the bound port (``port=0`` picks a free one)."""

    runner: web.AppRunner
    url: str

    @property
    def base_url(self) -> str:
        """What SAP's SDK calls ``base_url``: the API root including ``/v2``."""
        return f"{self.url}/v2"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/oauth/token"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(config: ApiConfig, **app_options: Any) -> RunningServer:
    """Build the application and listen on ``config.host``/``config.port``."""
    runner = web.AppRunner(
        build_app(config, **app_options),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(runner, f"http://{shown}:{port}")


async def serve(config: ApiConfig, *, ready: Callable[[RunningServer], None] | None = None) -> None:
    """Run until SIGINT or SIGTERM; a second signal is left to its default action (exit now)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        log.info("signal %d: draining (send it again to exit at once)", signum)
        for sig in signals:
            loop.remove_signal_handler(sig)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    server = await start_server(config)
    log.info("metricrelay api listening on %s (db %s)", server.url, config.db)
    log.info("run viewer at %s/", server.url)
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        await server.close()
        log.info("metricrelay api stopped")


class BackgroundServer:
    """The server on its own event loop in a daemon thread, for synchronous callers.

    SAP's SDK is synchronous (requests); tests and benchmarks drive it against this::

        with BackgroundServer(ApiConfig(port=0)) as server:
            client = AICoreV2Client(base_url=server.base_url, auth_url=server.auth_url, ...)
    """

    def __init__(self, config: ApiConfig, **app_options: Any) -> None:
        self.config = config
        self._app_options = app_options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="metricrelay-api", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: RunningServer | None = None
        self._error: BaseException | None = None

    @property
    def server(self) -> RunningServer:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def auth_url(self) -> str:
        return self.server.auth_url

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise TimeoutError("the API server did not start in time")
        if self._error is not None:
            raise RuntimeError("the API server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._server = await start_server(self.config, **self._app_options)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._server.close()
