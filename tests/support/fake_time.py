"""An injected clock and sleep for code that waits (retries, backoff, pacing): time moves only
when the code under test sleeps (or a test sets ``now``), and every sleep is recorded."""

from __future__ import annotations

__all__ = ["FakeTime"]


class FakeTime:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
