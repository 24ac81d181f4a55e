"""Background loops stop when cancelled, whatever they are awaiting at that moment.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when the outer
task is cancelled just as the inner awaitable completes (CPython gh-86296, fixed in 3.12): a
polling loop built on it can swallow its cancellation and run on, and whoever awaits it after
cancelling (a worker shutting down its /metrics listener) waits for ever. This was the
intermittent idle hang of the observability tests. The code uses ``asyncio.timeout`` instead.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from metricrelay.endpoints import Endpoints, ProbeConfig
from metricrelay.observability import WorkerMetrics
from metricrelay.stream import GroupInfo

SOURCE = Path(__file__).resolve().parents[1] / "src" / "metricrelay"


def test_no_source_module_uses_wait_for() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                offenders.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert offenders == [], "use asyncio.timeout (see this module's docstring)"


class QuickSource:
    """A group source whose answer takes one turn of the loop, like a fast Redis reply."""

    redis: Any = None

    async def group_info(self) -> GroupInfo | None:
        await asyncio.sleep(0)
        return GroupInfo(pending=0, lag=0)


@pytest.mark.parametrize("turns", range(12))
async def test_the_group_poller_stops_when_cancelled_at_any_moment(turns: int) -> None:
    """Cancelled after ``turns`` turns of the loop: before, during and just after a reply."""
    config = ProbeConfig(group_interval=0.001, stray_interval=0)
    endpoints = Endpoints(WorkerMetrics(), QuickSource(), config)
    task = asyncio.create_task(endpoints._poll_group())
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done, "the poller swallowed its cancellation and runs on"
    assert task.cancelled()
