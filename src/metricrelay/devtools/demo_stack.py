"""The demo's moving parts as child processes: the reference API and the workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Final

__all__ = ["ChildProcess", "start_api", "start_worker"]

DEMO_TOKEN = "demo-token"


class ChildProcess:
    """A ``python -m metricrelay …`` child whose log goes to a file of the demo folder."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str],
        *,
        append: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._start = log_path.stat().st_size if append and log_path.exists() else 0
        self._log: IO[bytes] = log_path.open("ab" if append else "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metricrelay", *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def kill(self) -> None:
        """SIGKILL: a crash, nothing drained."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a worker drains), then SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def bound_url(self, timeout: float = 30.0) -> str:
        """The URL the child logged once it listened (``--port 0`` picks the port)."""
        import time  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(
                rb"(http://127\.0\.0\.1:\d+)", self.log_path.read_bytes()[self._start :]
            )
            if found:
                return found.group(1).decode()
            if self.process.poll() is not None:
                break
            time.sleep(0.05)  # a child process starting: poll its log with a deadline
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}")


# Worker settings for test runs that must take seconds: short linger, block, budget and timeouts.
QUICK_WORKER_ENV: Final = {
    "METRICRELAY_LINGER": "0.05",
    "METRICRELAY_BLOCK_MS": "50",
    "METRICRELAY_RETRY_BUDGET": "2",
    "METRICRELAY_REQUEST_TIMEOUT": "2",
    "METRICRELAY_RETRY_AFTER_CAP": "0.2",
}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}


DEMO_FAULTS = (
    *("--fail-rate", "0.03", "--throttle-rate", "0.03", "--retry-after", "0"),
    *("--max-metrics-per-request", "60", "--seed", "7"),
)  # light fault injection, so the demo shows retries and splits


def start_api(folder: Path, *, faults: bool = True, args: tuple[str, ...] = ()) -> ChildProcess:
    """The reference API on a free port, data in ``folder/api.sqlite`` (kept across restarts)."""
    argv = ["api", "--port", "0", "--db", str(folder / "api.sqlite"), "--token", DEMO_TOKEN]
    argv += [*(DEMO_FAULTS if faults else ()), *args]
    return ChildProcess("api", argv, folder / "api.log", _clean_env(), append=True)


def start_worker(
    folder: Path,
    number: int,
    redis_url: str,
    api_url: str,
    *,
    burst: bool = False,
    **env_extra: str,
) -> ChildProcess:
    """A worker process (``--burst``: until the stream is drained); ``env_extra`` are further
    METRICRELAY_* variables."""
    env = _clean_env()
    env.update(
        {
            "METRICRELAY_REDIS_URL": redis_url,
            "METRICRELAY_API_URL": f"{api_url}/v2",
            "METRICRELAY_TOKEN": DEMO_TOKEN,
            "METRICRELAY_CONSUMER_NAME": f"demo-worker-{number}",
            "METRICRELAY_LINGER": "0.2",
            "METRICRELAY_RETRY_BASE": "0.05",
            "METRICRELAY_RETRY_CAP": "1",
            **env_extra,
        }
    )
    log_path = folder / f"worker-{number}.log"
    argv = ["worker", "--burst"] if burst else ["worker"]
    return ChildProcess(f"worker-{number}", argv, log_path, env, append=True)
