"""A simulated distributed training run for the demo: executions x ranks, each an Emitter."""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from metricrelay.producer.emitter import Emitter

__all__ = ["Training", "figure_svg", "points_per_rank"]

METRICS_PER_STEP: Final = 2  # training_loss and accuracy


def points_per_rank(steps: int) -> int:
    return steps * METRICS_PER_STEP


def figure_svg(values: list[float]) -> str:
    """A tiny loss curve as SVG text: what a training script would attach as a figure."""
    top = max(values) or 1.0
    points = " ".join(
        f"{120 * i / max(len(values) - 1, 1):.1f},{60 - 55 * v / top:.1f}"
        for i, v in enumerate(values)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60">'
        f'<polyline fill="none" stroke="#0a6ed1" points="{points}"/></svg>'
    )


@dataclass
class Training:
    """``executions`` x ``ranks`` threads, each logging loss and accuracy every step."""

    redis_url: str
    executions: list[str]
    ranks: int
    steps: int
    step_seconds: float = 0.0  # the simulated compute of one training step
    logged: int = 0
    errors: list[BaseException] = field(default_factory=list)
    emitters: list[Emitter] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._rank, args=(e, r), name=f"rank-{e}-{r}", daemon=True)
            for e in range(len(self.executions))
            for r in range(self.ranks)
        ]
        for thread in threads:
            thread.start()
        return threads

    def _rank(self, number: int, rank: int) -> None:
        execution = self.executions[number]
        try:
            emitter = Emitter(
                execution, redis_url=self.redis_url, flush_interval=0.1, handle_sigterm=False
            )
            with self._lock:
                self.emitters.append(emitter)
            rng = random.Random(number * 100 + rank)
            curve = []
            for step in range(self.steps):
                loss = 2.0 * math.exp(-step / (40 + 15 * number)) + 0.05 * rng.random()
                labels = {"rank": str(rank)}
                emitter.log_metrics(
                    {"training_loss": loss, "accuracy": 1 - loss / 2.2}, step, labels
                )
                curve.append(loss)
                if self.step_seconds:
                    time.sleep(self.step_seconds)  # the simulated forward/backward pass
                with self._lock:
                    self.logged += METRICS_PER_STEP
            if rank == 0:
                self._finish_run(emitter, number, curve)
        except BaseException as exc:  # reported by the demo, never swallowed
            self.errors.append(exc)

    def _finish_run(self, emitter: Emitter, number: int, curve: list[float]) -> None:
        emitter.set_tags({"model": "resnet-demo", "dataset": f"shard-{number}"})
        report = {
            "accuracy": round(1 - curve[-1] / 2.2, 4),
            "per_class": {"cat": {"precision": 0.91, "recall": 0.88}, "dog": {"precision": 0.87}},
        }
        emitter.log_custom_info("Classification Report", report)
        emitter.log_figure("Loss Curve", figure_svg(curve[:: max(1, len(curve) // 50)]))
