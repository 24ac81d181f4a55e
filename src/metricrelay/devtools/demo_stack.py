"""The demo's moving parts as child processes: the reference API and the workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final

__all__ = ["ChildProcess", "start_api", "start_worker"]

DEMO_TOKEN = "demo-token"


class ChildProcess:
    """A ``python -m metricrelay …`` child whose output (stdout and stderr) goes to a log file.

    With ``on_line``, the output goes through a pipe instead: a thread writes each line to the
    log and hands it to ``on_line`` the moment it arrives (benchmarks timestamp lines so).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str],
        *,
        append: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._start = log_path.stat().st_size if append and log_path.exists() else 0
        self._log: IO[bytes] = log_path.open("ab" if append else "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metricrelay", *argv],
            stdout=self._log if on_line is None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._terminated = False
        self._tee: threading.Thread | None = None
        if on_line is not None:
            self._tee = threading.Thread(target=self._copy_lines, args=(on_line,), daemon=True)
            self._tee.start()

    def _copy_lines(self, on_line: Callable[[str], None]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            on_line(line.decode(errors="replace"))

    def _close_log(self) -> None:
        if self._tee is not None:
            self._tee.join(10)  # the pipe ends with the process: every line is in the log
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing drained."""
        self.process.kill()
        self.process.wait()
        self._close_log()

    def terminate(self) -> None:
        """SIGTERM, once: a worker drains (a second SIGTERM makes it exit at once)."""
        if not self._terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless sent already; a worker drains), then SIGKILL if it does not end in
        time. Also for a child that has ended: its log is closed and its exit code returned."""
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()
        return self.process.returncode

    def log_text(self) -> str:
        """What the child logged since it started."""
        return self.log_path.read_bytes()[self._start :].decode(errors="replace")

    def wait_logged(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in the child's log, once it is there; RuntimeError if
        the child exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log_text())
            if found:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not log {pattern!r}; see {self.log_path}")
            time.sleep(0.02)  # a child process working: poll its log with a deadline

    def bound_url(self, timeout: float = 30.0) -> str:
        """The URL the child logged once it listened (``--port 0`` picks the port)."""
        try:
            return self.wait_logged(r"http://127\.0\.0\.1:\d+", timeout).group(0)
        except RuntimeError:
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}") from None


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


# What the demo's workers run with, unless told otherwise: a shorter linger and faster retries
# than the shipped defaults, so that its progress is lively.
DEMO_WORKER_ENV: Final[Mapping[str, str]] = {
    "METRICRELAY_LINGER": "0.2",
    "METRICRELAY_RETRY_BASE": "0.05",
    "METRICRELAY_RETRY_CAP": "1",
}


def start_worker(
    folder: Path,
    number: int,
    redis_url: str,
    api_url: str,
    *,
    burst: bool = False,
    args: Sequence[str] = (),
    defaults: Mapping[str, str] = DEMO_WORKER_ENV,
    on_line: Callable[[str], None] | None = None,
    **env_extra: str,
) -> ChildProcess:
    """A worker process logging to ``folder/worker-<number>.log`` (``--burst``: until the
    stream is drained), as consumer ``demo-worker-<number>`` with the token of the reference
    API (``METRICRELAY_TOKEN=""``: none). ``args`` come before the subcommand (``--log-level
    DEBUG``); ``defaults`` are METRICRELAY_* variables (``{}``: metricrelay's own defaults, as
    a benchmark wants), ``env_extra`` further ones over them; ``on_line``: see ChildProcess."""
    env = _clean_env()
    env.update(
        {
            "METRICRELAY_REDIS_URL": redis_url,
            "METRICRELAY_API_URL": f"{api_url}/v2",
            "METRICRELAY_TOKEN": DEMO_TOKEN,
            "METRICRELAY_CONSUMER_NAME": f"demo-worker-{number}",
            **defaults,
            **env_extra,
        }
    )
    log_path = folder / f"worker-{number}.log"
    argv = [*args, "worker", *(["--burst"] if burst else [])]
    return ChildProcess(f"worker-{number}", argv, log_path, env, append=True, on_line=on_line)
