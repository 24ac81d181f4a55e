"""SIGTERM a set of worker processes at once and check that each drains and exits in time."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Mapping

from metricrelay.devtools.demo_stack import ChildProcess


def sigterm_all(
    workers: Mapping[str, ChildProcess], within_s: float, note: Callable[[str], None]
) -> list[str]:
    """SIGTERM every worker (name → process) at once; each must exit 0 within ``within_s``.
    The failures, one line each; ``note`` hears each exit and its time. Every process is
    reaped and its log closed on return."""
    failures = []
    for worker in workers.values():
        # Only a worker that is up has its signal handlers; one restarted a moment ago would
        # die of the SIGTERM, which says nothing of draining. It logs the API URL once up.
        with contextlib.suppress(RuntimeError):  # it ended instead: reported below
            worker.bound_url(30)
    stopping = {name: w for name, w in workers.items() if w.process.poll() is None}
    for name, worker in workers.items():
        if name not in stopping:
            failures.append(f"{name} had exited before SIGTERM ({worker.process.poll()})")
    for worker in stopping.values():
        worker.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for name, worker in stopping.items():
        try:
            code = worker.process.wait(max(0.0, signalled + within_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            failures.append(f"{name} still running {within_s:.0f}s after SIGTERM")
            continue
        note(f"{name} exited {code} {time.monotonic() - signalled:.2f}s after SIGTERM")
        if code != 0:
            failures.append(f"{name} exited with code {code} after SIGTERM")
    for worker in workers.values():
        worker.stop()  # reaped already; closes the log
    return failures
