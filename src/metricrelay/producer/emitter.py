"""Emitter (a background thread does the I/O), for training code; AsyncEmitter shares its core.

A ``log_*`` call checks its arguments, stamps the time and appends one tuple per call to an
in-memory queue: no network, no JSON, no lock on the common path (a deque append is atomic).
A writer encodes and packs the queue into few large fragments (CONTRACT.md §2.1) and appends
them to the stream with pipelined XADD, reconnecting on its own.

Timestamps: one clock read per call, shared by the metrics of a ``log_metrics`` call (one step,
one moment) and strictly increasing per emitter in microseconds, so two calls can never make
identical points (same name, step, timestamp and labels), which a deduplicating store would
keep once. Calls faster than one a microsecond run the stamps ahead of the clock by at most
that many microseconds until the calls slow down. (The check is not locked: two threads calling
one emitter at the same instant may, rarely, share a microsecond.)
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import orjson

from metricrelay import progress
from metricrelay.connection import async_client, sync_client
from metricrelay.errors import ConfigError
from metricrelay.models import MAX_CUSTOM_INFO_BYTES
from metricrelay.producer.packing import Marker, Named, Points, pack
from metricrelay.producer.points import (
    PointError,
    check_labels,
    check_metric_name,
    check_metric_names,
    check_name,
    check_step,
    check_text,
    check_value,
    check_values,
    stamp,
)
from metricrelay.producer.spool import FsyncPolicy, default_directory
from metricrelay.producer.spool_writer import Diverter
from metricrelay.progress import DeliveryReport
from metricrelay.settings import Settings

__all__ = [
    "BufferFull",
    "Emitter",
    "EmitterConfig",
    "PointError",
    "SpoolPending",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Policy = Literal["block", "drop"]
_METRIC_COST: Final = 96  # approximate bytes one queued metric holds, for the memory bound


class BufferFull(RuntimeError):
    """The producer's buffer stayed full for the whole block timeout (Redis slow or down)."""


class SpoolPending(TimeoutError):
    """``flush`` ran out of time with fragments safe in the disk spool, not yet in Redis."""

    def __init__(self, spooled: int, where: object) -> None:
        super().__init__(f"{spooled} fragments still spooled in {where}, waiting for Redis")
        self.spooled = spooled


def _left(started: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


class EmitterConfig:
    """Where to write and how to behave: arguments over the environment, read through the one
    settings table (:class:`~metricrelay.settings.Settings`: ``METRICRELAY_*`` with SAP's
    ``AICORE_*`` fall-backs, CONTRACT §2.3); no defaults of its own."""

    def __init__(
        self,
        execution_id: str | None = None,
        *,
        redis_url: str | None = None,
        resource_group: str | None = None,
        prefix: str | None = None,
        shards: int | None = None,
        cluster: bool | None = None,
        flush_interval: float | None = None,
        max_buffer_bytes: int | None = None,
        policy: Policy | None = None,
        block_timeout: float | None = None,
        on_error: Literal["raise", "warn"] | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        spool_fsync: FsyncPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        given = {
            "execution_id": execution_id,
            "redis_url": redis_url,
            "resource_group": resource_group,
            "prefix": prefix,
            "shards": shards,
            "cluster": cluster,
            "flush_interval": flush_interval,
            "max_buffer_bytes": max_buffer_bytes,
            "buffer_policy": policy,
            "block_timeout": block_timeout,
            "on_error": on_error,
            "spool_dir": spool_dir,
            "spool_max_bytes": spool_max_bytes,
            "spool_fsync": spool_fsync,
        }
        try:
            settings = Settings.from_sources(
                {name: value for name, value in given.items() if value is not None}, env
            )
        except ConfigError as exc:  # named as the flags would be: name the arguments instead
            message = str(exc)
            for name in given:
                argument = "policy" if name == "buffer_policy" else name
                message = message.replace(f"--{name.replace('_', '-')}:", f"{argument}:")
            raise ValueError(message) from None
        found = settings.api.execution_id
        if not found:
            raise ValueError(
                "no execution id: pass one, or set METRICRELAY_EXECUTION_ID (AI Core sets "
                "AICORE_EXECUTION_ID inside executions)"
            )
        self.execution_id = found
        self.redis_url = settings.redis.redis_url
        self.redis_timeout = settings.redis.redis_timeout
        self.resource_group = settings.api.resource_group
        # one execution, one shard: everything this emitter writes goes to one stream, in order
        self.keys = settings.keys().route(self.resource_group, self.execution_id)
        self.cluster = settings.redis.cluster
        emitter = settings.emitter
        self.flush_interval = emitter.flush_interval
        self.max_buffer_bytes = emitter.max_buffer_bytes
        self.policy: Policy = emitter.buffer_policy
        self.block_timeout = emitter.block_timeout
        self.on_error: Literal["raise", "warn"] = emitter.on_error
        self.spool_dir = default_directory(emitter.spool_dir, env)  # issue 18: the disk spool
        self.spool_max_bytes = emitter.spool_max_bytes
        self.spool_fsync: FsyncPolicy = emitter.spool_fsync


class _Core:
    """The call-site half shared by both emitters: checks, queue, memory bound, counters."""

    def __init__(self, config: EmitterConfig) -> None:
        self.config = config
        self._queue: deque[Points | Named | Marker] = deque()
        self._held = 0  # calls in the batch the writer is trying to write
        self._queued_bytes = 0  # grows in the caller's thread
        self._written_bytes = 0  # grows in the writer
        self._space = threading.Event()
        self.dropped = 0  # points (and tags, customInfo) refused under policy "drop"
        self.blocked = 0  # calls that had to wait for room under policy "block"
        self.written_points = 0
        self.entry_ids: list[str] = []
        self._closed = False
        self._stop = False  # the writer ends once the queue is empty
        self._last_us = 0  # the last stamp given, in microseconds since the epoch
        self._max_bytes = config.max_buffer_bytes
        self._diverter: Diverter  # each emitter's, from _divert()

    def _now(self) -> int:
        """One clock read: this call's time in ns, a microsecond after the previous call's at
        the least (so stamps are distinct per call; see the module's docstring)."""
        micros = time.time_ns() // 1000
        if micros <= self._last_us:
            micros = self._last_us + 1
        self._last_us = micros
        return micros * 1000

    # -- logging ------------------------------------------------------------------------------

    def log_metric(
        self,
        name: str,
        value: float,
        step: int | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        timestamp: Any = None,
    ) -> None:
        """One point; the time of the call unless ``timestamp`` (aware datetime or RFC 3339)."""
        self._metric(name, value, step, labels, self._now() if timestamp is None else timestamp)

    def log_metrics(
        self,
        values: Mapping[str, float],
        step: int | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Several metrics of one step, with one timestamp."""
        micros = time.time_ns() // 1000  # self._now(), inlined: this is the hot path
        if micros <= self._last_us:
            micros = self._last_us + 1
        self._last_us = micros
        moment = micros * 1000
        try:  # the whole call at once: every rule of _metric, on the call's tuples
            op: Points = (
                check_metric_names(tuple(values)),
                check_values(tuple(values.values())),
                check_step(step),
                check_labels(labels) if labels else None,
                moment,
            )
        except PointError:  # metric by metric, to raise or drop exactly as for single points
            for name, value in values.items():
                self._metric(name, value, step, labels, moment)
            return
        if op[0]:
            self._put(op, _METRIC_COST * len(op[0]))

    def _metric(self, name: Any, value: Any, step: Any, labels: Any, moment: Any) -> None:
        try:
            op: Points = (
                (check_metric_name(name),),
                (check_value(value),),
                check_step(step),
                check_labels(labels) if labels else None,
                moment if type(moment) is int else stamp(moment),
            )
        except PointError:
            if self.config.on_error == "raise":
                raise
            log.warning("dropped an invalid point", exc_info=True)
            return
        self._put(op, _METRIC_COST)

    def log_list_metric(self, name: str, values: Sequence[float], start_step: int = 0) -> None:
        """A list of values stored as consecutive steps from ``start_step``."""
        for offset, value in enumerate(values):
            self.log_metric(name, value, start_step + offset)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for name, value in tags.items():
            self._named("tags", name, value)

    def log_custom_info(self, name: str, value: Any) -> bool:
        """A string as is; anything else JSON-serialised (as SAP's tutorial stores reports).
        False when it was dropped as invalid (``on_error="warn"``)."""
        return self._named("customInfo", name, value)

    def log_figure(self, name: str, figure: Any) -> None:
        """A matplotlib figure or PNG bytes (stored base64) or SVG text, as customInfo."""
        if isinstance(figure, str):
            text = figure
        else:
            if not isinstance(figure, bytes | bytearray):
                import io  # noqa: PLC0415 - only for matplotlib figures

                buffer = io.BytesIO()
                figure.savefig(buffer, format="png")
                figure = buffer.getvalue()
            text = base64.b64encode(bytes(figure)).decode()
        self._named("customInfo", name, text)

    def _named(self, section: str, name: str, value: Any) -> bool:
        try:
            check_name(name, f"{section} name")
            if section == "customInfo" and not isinstance(value, str):
                value = _json_text(name, value)
            limit = 256 if section == "tags" else None
            if not isinstance(value, str) or not value or (limit and len(value) > limit):
                raise PointError(f"{section} value must be a non-empty string: {value!r}")
            if not value.isascii():
                check_text(value, f"{section} value")
            size = len(orjson.dumps({"name": name, "value": value}))
            if section == "customInfo" and size > MAX_CUSTOM_INFO_BYTES:
                raise PointError(
                    f"customInfo {name!r} is {size} bytes encoded; the API takes at most "
                    f"{MAX_CUSTOM_INFO_BYTES} for all customInfo of a run"
                )
        except PointError:
            if self.config.on_error == "raise":
                raise
            log.warning("dropped an invalid %s item", section, exc_info=True)
            return False
        item = Named(section, name, value)
        self._put(item, item.size)
        return True

    def _put(self, op: Points | Named, cost: int) -> None:
        if self._closed:
            raise RuntimeError("the emitter is closed")
        if (
            self._queued_bytes - self._written_bytes + cost > self._max_bytes  # _over, inlined
            and not self._make_room(cost)
        ):
            self.dropped += 1 if isinstance(op, Named) else len(op[0])
            return
        self._queued_bytes += cost
        self._queue.append(op)

    def _over(self, cost: int) -> bool:
        return self._queued_bytes - self._written_bytes + cost > self._max_bytes

    def _make_room(self, cost: int) -> bool:
        """False: drop this op (policy ``drop``). Raises BufferFull after the block timeout."""
        if self.config.policy == "drop":
            return False
        deadline = time.monotonic() + self.config.block_timeout
        self.blocked += 1
        while self._over(cost):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferFull(
                    f"the producer buffer ({self.config.max_buffer_bytes} bytes) stayed full "
                    f"for {self.config.block_timeout}s: is Redis reachable?"
                )
            self._wait_for_room(cost, left)
        return True

    def _wait_for_room(self, cost: int, left: float) -> None:
        """Up to ``left`` seconds, while the writer's thread makes room."""
        self._space.clear()
        if self._over(cost):  # the writer may have made room between the check and clear
            self._wake()
            self._space.wait(left)

    def _wake(self) -> None:
        raise NotImplementedError

    # -- the writer's half --------------------------------------------------------------------

    def _divert(self, redis: Any) -> Diverter:
        """The way around Redis outages both emitters write through (issue 18): Redis, else
        the disk spool; ``redis`` is a synchronous client, used only by the writer."""
        config = self.config
        return Diverter(
            redis,
            directory=config.spool_dir,
            execution_id=config.execution_id,
            max_bytes=config.spool_max_bytes,
            fsync=config.spool_fsync,
            on_ids=self._replayed,
        )

    @property
    def spooled(self) -> int:
        """Fragments waiting in the disk spool for Redis (issue 18)."""
        return self._diverter.spooled

    def _replayed(self, ids: list[str]) -> None:
        self.entry_ids += ids

    def _pause(self) -> float:
        """How long the writer idles: briefly while the spool waits to be replayed."""
        return 0.05 if self._diverter.spooled else self.config.flush_interval

    def _take(self, limit: int = 100_000) -> tuple[list[Points | Named], list[Marker]]:
        """Ops from the queue's head, about ``limit`` items at most (a call's points count
        one each), up to and including the first marker."""
        ops: list[Points | Named] = []
        markers: list[Marker] = []
        queue = self._queue
        items = 0
        while queue and items < limit:
            op = queue.popleft()
            if isinstance(op, Marker):
                markers.append(op)
                break  # a marker fires once what precedes it is written: stop the batch here
            ops.append(op)
            items += 1 if isinstance(op, Named) else len(op[0])
        return ops, markers

    def _next_batch(self) -> tuple[list[Points | Named], list[Marker], list[bytes]]:
        """The next ops (up to a marker), the markers to fire after them, their fragments."""
        ops, markers = self._take()
        config = self.config
        return (
            ops,
            markers,
            [data for data, _ in pack(ops, config.resource_group, config.execution_id)],
        )

    def _write_next(self, give_up: Callable[[], bool] | None = None) -> list[Marker] | None:
        """Blocking (the writer's thread): the next batch to Redis, else to the spool, else
        retried; the markers to fire now that it is safe, or None when close() gave up.
        ``give_up``: retry only until it says so, then put the batch back at the queue's head
        (and return no markers)."""
        ops, markers, fragments = self._next_batch()
        self._held = len(ops)
        # nothing logged is lost: to Redis, else to the spool, else retried; the memory
        # buffer half full means Redis is slower than the training: spool
        where, ids = self._diverter.deliver(
            [(self.config.keys.events, data) for data in fragments],
            pressure=2 * (self._queued_bytes - self._written_bytes) > self._max_bytes,
            stop=give_up or (lambda: self._stop and self._closed),
        )
        self._held = 0
        if where == "stopped":
            if give_up is not None:
                self._queue.extendleft(reversed([*ops, *markers]))
                return []
            return None  # close() gave up waiting; it logged what is left
        self._account(ops, [i.decode() for i in ids])
        return markers

    def _account(self, ops: list[Points | Named], ids: list[str]) -> None:
        points = named = 0
        for op in ops:
            if isinstance(op, Named):
                named += op.size
            else:
                points += len(op[0])
        self._written_bytes += points * _METRIC_COST + named
        self.written_points += points
        self.entry_ids += ids
        self._space.set()

    # -- closing ------------------------------------------------------------------------------

    def _unwritten(self) -> None:
        """Say what close() leaves unwritten: the calls queued and those the writer holds."""
        queued = sum(not isinstance(op, Marker) for op in list(self._queue))
        log.error("closing with %d operations not written to Redis", queued + self._held)

    def _closed_down(self, writer_done: bool) -> None:
        """After the writer stopped: give the spool up (unless the writer still holds it) and
        say what is left on disk and what was dropped."""
        if writer_done:
            left, where = self._diverter.close()
            if left:
                log.warning(
                    "Redis unreachable: %d fragments left in the spool %s; a later Emitter of "
                    "execution %s or `metricrelay spool replay` sends them",
                    left,
                    where,
                    self.config.execution_id,
                )
        if self.dropped:
            log.warning("the emitter dropped %d points (buffer full, policy drop)", self.dropped)


def _json_text(name: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError
        raise PointError(f"customInfo {name!r}: its value cannot be JSON: {exc}") from None


def _exit_on_sigterm() -> None:
    """Make SIGTERM exit through the interpreter's normal shutdown, so atexit flushes run
    (Python's default action kills the process without them). Only where nobody has installed
    a handler of their own, and only from the main thread, where handlers can be installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)


class Emitter(_Core):
    """For training scripts: ``log_*`` never touch the network; a daemon thread writes."""

    def __init__(
        self, execution_id: str | None = None, *, handle_sigterm: bool = True, **options: Any
    ) -> None:
        super().__init__(EmitterConfig(execution_id, **options))
        self._redis = sync_client(
            self.config.redis_url, cluster=self.config.cluster, timeout=self.config.redis_timeout
        )
        self._diverter = self._divert(self._redis)
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metricrelay-emitter", daemon=True)
        self._thread.start()
        atexit.register(self.close, timeout=10.0)
        if handle_sigterm:
            _exit_on_sigterm()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        self._wakeup.set()

    def flush(
        self, timeout: float | None = None, *, wait_delivered: bool = False
    ) -> DeliveryReport | None:
        """Everything logged so far is in Redis (and, with ``wait_delivered``, accepted by the
        API or dead-lettered: the end-of-run barrier). Raises TimeoutError when time runs out:
        :class:`SpoolPending` when all is safe on disk but not yet in Redis, saying how much."""
        started = time.monotonic()
        if not self._durable(timeout):
            raise TimeoutError(f"not everything reached Redis or the spool within {timeout}s")
        if self.spooled and not self._diverter.drained.wait(_left(started, timeout)):
            raise SpoolPending(self.spooled, self._diverter.location)
        if not wait_delivered:
            return None
        return wait_delivered_sync(self.config, list(self.entry_ids), _left(started, timeout))

    def _durable(self, timeout: float | None) -> bool:
        """Wait until everything logged so far is in Redis or in the spool."""
        done = threading.Event()
        self._queue.append(Marker(done.set))
        self._wake()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush what can be flushed within ``timeout``, then stop the writer."""
        if self._closed:
            return
        started = time.monotonic()
        try:  # while Redis is away the spool keeps it all: no need to wait out the timeout
            if not self._durable(timeout):
                raise TimeoutError
            if self.spooled and self._diverter.redis_up:  # Redis is back: time to replay
                self._diverter.drained.wait(_left(started, timeout))
        except TimeoutError:
            self._unwritten()
        finally:
            self._closed = True
            self._stop = True
            self._wake()
            self._thread.join(timeout=5)
            self._closed_down(writer_done=not self._thread.is_alive())
            atexit.unregister(self.close)  # nothing left to do at exit: let it be collected

    def _run(self) -> None:
        diverter = self._diverter
        while not self._stop or self._queue:
            self._wakeup.wait(self._pause())
            self._wakeup.clear()
            diverter.drain()  # the spool (and dead processes' leftovers) before anything new
            while self._queue:
                markers = self._write_next()
                if markers is None:
                    return
                for marker in markers:
                    marker.callback()
                diverter.drain()


def wait_delivered_sync(
    config: EmitterConfig, ids: list[str], timeout: float | None
) -> DeliveryReport:
    """The barrier for synchronous callers: run on a private loop in a helper thread, so it
    works even where the caller's thread already runs an event loop (notebooks)."""

    async def check() -> DeliveryReport:
        client = async_client(
            config.redis_url, cluster=config.cluster, timeout=config.redis_timeout
        )
        try:
            return await progress.wait_delivered(
                client,
                config.keys,
                config.resource_group,
                config.execution_id,
                ids,
                timeout=timeout,
            )
        finally:
            await client.aclose()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metricrelay-wait") as pool:
        return pool.submit(asyncio.run, check()).result()
