"""What a delivered body leaves behind: dead letters for its failed parts, progress counts for
its execution, counters, and one log line."""

from __future__ import annotations

import logging
from collections.abc import Callable

from metricrelay.deadletter import DeadLetter
from metricrelay.relay.batching import Body
from metricrelay.relay.dispatch import Delivery
from metricrelay.relay.tally import Tally, dead_tally

__all__ = ["dead_letters", "log_batch", "progress", "tally"]


def dead_letters(delivery: Delivery) -> list[DeadLetter]:
    return [
        DeadLetter(f.body.resource(), f.reason, f.error, list(f.body.sources), f.status, f.attempts)
        for f in delivery.failures
    ]


def progress(body: Body, delivery: Delivery) -> dict[str, int]:
    """The execution's progress counter deltas: points accepted, points dead by reason."""
    dead: dict[str, int] = {}
    for failure in delivery.failures:
        key = f"points_dead_{failure.reason}"
        dead[key] = dead.get(key, 0) + failure.body.metric_count
    return {"points_accepted": body.metric_count - sum(dead.values()), **dead}


def tally(count: Callable[[Tally, int], None], body: Body, delivery: Delivery) -> None:
    failed = sum(f.body.metric_count for f in delivery.failures)
    count(Tally.REQUESTS, delivery.requests)
    count(Tally.RETRIES, delivery.retries)
    count(Tally.SPLITS, delivery.splits)
    count(Tally.SPLITS_413, delivery.too_large_splits)
    count(Tally.SPLITS_400, delivery.splits - delivery.too_large_splits)
    count(Tally.POINTS_SENT, body.metric_count - failed)
    for failure in delivery.failures:
        count(dead_tally(failure.reason), 1)
    if delivery.failures:
        isolated = sum(f.body.item_count for f in delivery.failures if f.status == 400)
        count(Tally.ISOLATED_400, isolated)


def log_batch(logger: logging.Logger, body: Body, delivery: Delivery, seconds: float) -> None:
    """One line per body, with the same facts as fields for JSON logs (cli.py); on the worker's
    logger, which operators filter on."""
    logger.info(
        "batch %s/%s: %d points, %d bytes, statuses %s, %d requests, %d dead, %.0f ms",
        body.resource_group,
        body.execution_id,
        body.metric_count,
        body.size,
        delivery.statuses,
        delivery.requests,
        len(delivery.failures),
        seconds * 1000,
        extra={
            "resource_group": body.resource_group,
            "execution_id": body.execution_id,
            "points": body.metric_count,
            "bytes": body.size,
            "requests": delivery.requests,
            "dead": len(delivery.failures),
            "ms": round(seconds * 1000, 1),
        },
    )
