"""The worker's Prometheus metrics: counters fed by ``Worker.count``, request timings, gauges."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from metricrelay.deadletter import Reason
from metricrelay.relay.batching import CloseReason
from metricrelay.relay.tally import Tally, body_tally, dead_tally

if TYPE_CHECKING:
    from metricrelay.relay.stream import GroupInfo


class Watched(Protocol):
    """What the gauges read: a worker, or the fleet of a sharded worker process."""

    @property
    def held_bytes(self) -> int: ...
    @property
    def memory_budget(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def shards_owned(self) -> int: ...
    @property
    def redis_full_since(self) -> float | None: ...


class Limited(Protocol):
    """The delivery slots of a worker process (relay/concurrency.py), as the gauge reads them."""

    @property
    def limit(self) -> int: ...

    @property
    def pace(self) -> float: ...

    @property
    def peer_refusals(self) -> int: ...


__all__ = ["LATENCY_BUCKETS", "LOOP_LAG_BUCKETS", "ApiContact", "WorkerMetrics"]

log = logging.getLogger(__name__)

# A PATCH of a full body takes tens of milliseconds on a good day; the tail up to the default
# request timeout (30 s) must stay visible, or a slow API hides in the +Inf bucket.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOOP_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# Answers that say the API is not serving us (as opposed to refusing one body's content: a 400
# or a 413 is the API working as it should).
_FAILING_STATUSES: Final = frozenset({401, 403, 408, 429})

Increment = Callable[[float], None]


class ApiContact:
    """Whether requests to the API are failing, and since when (for ``/readyz``).

    A request without an answer, a 5xx, 401, 403, 408 or 429 is a failure; any other answer is
    a success and ends the failing streak. One success among failures means the API still works.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.failing_since: float | None = None

    def record(self, result: int | str) -> None:
        if result == "cancelled":  # our own shutdown, not the API's doing
            return
        failed = isinstance(result, str) or result >= 500 or result in _FAILING_STATUSES
        if not failed:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = self._clock()

    def failing_for(self) -> float:
        """Seconds the API has been failing without a success in between; 0 if it is not."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since


class _ReadAtScrape:
    """Counters other objects keep, read at scrape time: ``(name, documentation, read)``."""

    def __init__(self, *counters: tuple[str, str, Callable[[], float]]) -> None:
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        for name, documentation, read in self._counters:
            yield CounterMetricFamily(name, documentation, value=read())


class WorkerMetrics:
    """One worker's metrics in a registry of its own, so several workers fit in one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.api = ApiContact(clock)
        self._init_counters()
        self._init_gauges()
        self._by_name = self._increments()
        self._watched: Watched | None = None

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _init_counters(self) -> None:
        counter = self._counter
        self.events_read = counter(
            "metricrelay_events_read", "Stream entries taken in (new and reclaimed)."
        )
        self.events_acked = counter("metricrelay_events_acked", "Stream entries acknowledged.")
        self.events_reclaimed = counter(
            "metricrelay_events_reclaimed",
            "Entries taken over from consumers that stopped (XAUTOCLAIM).",
        )
        self.events_trimmed = counter(
            "metricrelay_events_trimmed", "Acknowledged entries deleted (XTRIM)."
        )
        self.events_misrouted = counter(
            "metricrelay_events_misrouted",
            "Entries found in another shard than their execution routes to (a producer that "
            "does not follow the routing rule, or another shard count): delivered, but their "
            "order against the execution's other entries is not kept.",
        )
        self.points_sent = counter("metricrelay_points_sent", "Metric points the API accepted.")
        self.bodies = counter(
            "metricrelay_bodies", "PATCH bodies closed, by why they closed.", "reason"
        )
        self.requests = counter(
            "metricrelay_requests",
            "PATCH requests, by HTTP status ('error': no answer; 'cancelled': shutdown).",
            "status",
        )
        self.retries = counter(
            "metricrelay_retries", "Requests repeated after a retriable failure."
        )
        self.splits = counter(
            "metricrelay_splits",
            "Bodies split in halves, after a 413 (too large) or a 400 (bisection).",
            "status",
        )
        self.isolated = counter(
            "metricrelay_isolated_items",
            "Items a 400 was narrowed down to and dead-lettered as rejected.",
        )
        self.dead_letters = counter(
            "metricrelay_dead_letters", "Dead letters written, by reason.", "reason"
        )
        # Series that exist from the start read 0 instead of being absent, so rate() and
        # alerts work before the first event of each kind.
        for close_reason in CloseReason:
            self.bodies.labels(close_reason.value)
        for reason in Reason:
            self.dead_letters.labels(reason.value)
        for status in ("413", "400"):
            self.splits.labels(status)

    def _init_gauges(self) -> None:
        r = self.registry
        self.latency = Histogram(
            "metricrelay_request_duration_seconds",
            "Time from sending a PATCH to its answer (or to its failure).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "metricrelay_requests_in_flight", "PATCH requests awaiting an answer.", registry=r
        )
        self.group_lag = Gauge(
            "metricrelay_consumer_group_lag",
            "Stream entries not yet delivered to the consumer group (NaN: Redis cannot tell).",
            registry=r,
        )
        self.group_pending = Gauge(
            "metricrelay_consumer_group_pending",
            "Entries delivered to the group's consumers and not yet acknowledged.",
            registry=r,
        )
        # A histogram rather than a gauge of the last tick: a stall between two scrapes stays
        # visible instead of being overwritten by the next, punctual tick.
        self.loop_lag = Histogram(
            "metricrelay_event_loop_lag_seconds",
            "How late the event loop ran the health watchdog's ticks (a busy or blocked loop).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.api_failing = Gauge(
            "metricrelay_api_failing_seconds",
            "Seconds the API has been failing without a success in between (0: it is not).",
            registry=r,
        )
        self.api_failing.set_function(self.api.failing_for)
        self.stray_entries = Gauge(
            "metricrelay_stray_stream_entries",
            "Entries in event streams of another shard layout, which no worker reads (a producer "
            "with another METRICRELAY_SHARDS); NaN: not looked yet, or Redis unreadable.",
            registry=r,
        )
        self.stray_entries.set(math.nan)
        self.group_lag.set(math.nan)
        self.group_pending.set(math.nan)

    def watch(self, worker: Watched, tokens: object, slots: Limited | None = None) -> None:
        """Gauges read from the worker at scrape time (attribute reads, nothing on the hot path);
        ``slots``: the process's delivery slots, whose adaptive limit dashboards plot."""
        r = self.registry
        if slots is not None:
            self._watch_limit(slots)
        held = Gauge(
            "metricrelay_buffered_bytes",
            "Bytes of stream entries held (buffered, in flight, awaiting retry) until acked.",
            registry=r,
        )
        held.set_function(lambda: worker.held_bytes)
        budget = Gauge(
            "metricrelay_memory_budget_bytes",
            "Held bytes at which the worker stops reading.",
            registry=r,
        )
        budget.set(worker.memory_budget)
        in_flight = Gauge(
            "metricrelay_deliveries_in_flight",
            "Bodies being delivered (requests, backoff waits, splits), one per execution at most.",
            registry=r,
        )
        in_flight.set_function(lambda: worker.in_flight)
        queued = Gauge(
            "metricrelay_bodies_queued",
            "Closed bodies waiting for their execution's turn or a free slot.",
            registry=r,
        )
        queued.set_function(lambda: worker.queued)
        owned = Gauge(
            "metricrelay_shards_owned",
            "Event-stream shards this worker holds the lease of (1 with a single shared stream).",
            registry=r,
        )
        owned.set_function(lambda: worker.shards_owned)
        full = Gauge(
            "metricrelay_redis_full",
            "1 while Redis refuses the worker's writes for lack of memory (maxmemory reached).",
            registry=r,
        )
        full.set_function(lambda: 0 if worker.redis_full_since is None else 1)
        self._watched = worker
        r.register(  # token requests (only OAuth makes any)
            _ReadAtScrape(
                (
                    "metricrelay_token_refreshes",
                    "Access tokens obtained from the token service.",
                    lambda: getattr(tokens, "refreshes", 0),
                ),
                (
                    "metricrelay_token_failures",
                    "Token requests the token service failed or refused.",
                    lambda: getattr(tokens, "failures", 0),
                ),
            )
        )

    def _watch_limit(self, slots: Limited) -> None:
        limit = Gauge(
            "metricrelay_delivery_limit",
            "Bodies allowed in flight at once: the adaptive concurrency limit (at most "
            "METRICRELAY_CONCURRENCY), lowered when the API pushes back.",
            registry=self.registry,
        )
        limit.set_function(lambda: slots.limit)
        pace = Gauge(
            "metricrelay_delivery_pace_per_second",
            "PATCH starts per second the worker allows once the API answered 429 (its adaptive "
            "level over one round trip, shared with the other workers delivering); 0 while "
            "not paced.",
            registry=self.registry,
        )
        pace.set_function(lambda: slots.pace)
        peers = (
            "metricrelay_peer_refusals",
            "429s the API answered to the other workers sharing it, heard through Redis: back "
            "pressure for this worker's delivery limit too.",
            lambda: slots.peer_refusals,
        )
        self.registry.register(_ReadAtScrape(peers))

    # ------------------------------------------------------------------ fed by the worker

    def redis_is_full(self) -> bool:
        """Whether the watched worker's last Redis write was refused for lack of memory."""
        watched = self._watched
        return watched is not None and watched.redis_full_since is not None

    def count(self, name: Tally, amount: int) -> None:
        """Add to the metric behind one of the worker's counters (some have none)."""
        increment = self._by_name.get(name)
        if increment is not None and amount:
            increment(amount)

    def _increments(self) -> dict[Tally, Increment]:
        by_name: dict[Tally, Increment] = {
            Tally.ENTRIES_READ: self.events_read.inc,
            Tally.ENTRIES_ACKED: self.events_acked.inc,
            Tally.RECLAIMED: self.events_reclaimed.inc,
            Tally.ENTRIES_MISROUTED: self.events_misrouted.inc,
            Tally.TRIMMED: self.events_trimmed.inc,
            Tally.POINTS_SENT: self.points_sent.inc,
            Tally.RETRIES: self.retries.inc,
            Tally.ISOLATED_400: self.isolated.inc,
            Tally.SPLITS_413: self.splits.labels("413").inc,
            Tally.SPLITS_400: self.splits.labels("400").inc,
        }
        for close_reason in CloseReason:
            by_name[body_tally(close_reason)] = self.bodies.labels(close_reason.value).inc
        for reason in Reason:
            by_name[dead_tally(reason)] = self.dead_letters.labels(reason.value).inc
        # requests and their statuses come from the dispatcher's observer, per request
        return by_name

    # ------------------------------------------------------------------ fed by the dispatcher

    def request_started(self) -> None:
        self.requests_in_flight.inc()

    def request_finished(self, result: int | str, seconds: float) -> None:
        """One request ended: ``result`` is the HTTP status, "error" or "cancelled"."""
        self.requests_in_flight.dec()
        self.requests.labels(str(result)).inc()
        if result != "cancelled":
            self.latency.observe(seconds)
        self.api.record(result)

    # ------------------------------------------------------------------ fed by the endpoints

    def set_group(self, info: GroupInfo | None) -> None:
        """The consumer group's lag and pending count; None: unknown (group missing or no Redis)."""
        if info is None:
            self.group_lag.set(math.nan)
            self.group_pending.set(math.nan)
            return
        self.group_lag.set(math.nan if info.lag is None else info.lag)
        self.group_pending.set(info.pending)
