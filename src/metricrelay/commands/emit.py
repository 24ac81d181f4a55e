"""``metricrelay emit``: JSON lines (fragments or simple points) from a file or stdin → stream.

Simple points ``{"executionId", "name", "value", "step"}`` (optionally ``timestamp``,
``labels``, ``resourceGroup``) are packed per execution into fragments of up to 1000 metrics;
fragments are validated and written as they are. Bad lines are reported with their number and
skipped. With ``METRICRELAY_SHARDS`` > 1 each fragment goes to the stream of its execution's
shard (keys.py).

While Redis is unreachable the fragments go to the Emitter's disk spool instead
(``--spool-dir`` or ``METRICRELAY_SPOOL_DIR``, ``METRICRELAY_SPOOL_MAX_BYTES``,
``METRICRELAY_SPOOL_FSYNC``; files ``emit@<pid>-<hex>.<n>.spool``) and are replayed in order as
soon as Redis answers again. At the end of the input, if Redis stayed away for ``--wait`` seconds,
the spool is left on disk: ``metricrelay spool replay`` (or the next ``metricrelay emit``)
sends it.

Exit codes: 0 every point is in Redis; 3 every point is safe, some in the spool only, not yet
in Redis; 1 bad lines were skipped (whatever became of the rest), or for ``--wait`` seconds
neither Redis nor the spool (full, or off) took a batch: the input stops there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from metricrelay.aiapi.body import oversized_item
from metricrelay.codec import decode_entry
from metricrelay.keys import Keys
from metricrelay.producer.packing import Packer
from metricrelay.producer.spool_writer import Diverter

if TYPE_CHECKING:
    from metricrelay.settings import EmitterSettings

__all__ = ["EXIT_SPOOLED", "SPOOL_NAME", "register", "run"]

_BATCH: Final = 500  # XADDs per pipeline round trip
EXIT_BAD_LINES: Final = 1
EXIT_SPOOLED: Final = 3  # safe on local disk, not yet in Redis
# The spool's name where an Emitter's has its execution: one spool holds many executions
# (each record names its stream), and a later `emit` replays those a dead one left.
SPOOL_NAME: Final = "emit"
_POINT_KEYS: Final = frozenset({"name", "value"})


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emit",
        help="write JSON lines (fragments or simple points) to the stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", nargs="?", type=argparse.FileType("rb"), default=sys.stdin.buffer)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--resource-group", default=None, help="for lines without one")
    parser.add_argument("--shards", type=int, default=None, help="event streams (default 1)")
    parser.add_argument(
        "--cluster", action="store_true", default=None, help="Redis is a Redis Cluster"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--spool-dir",
        default=None,
        help="where fragments wait while Redis is away (default: METRICRELAY_SPOOL_DIR, else "
        "the per-user cache)",
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long Redis may stay away at the end of the input before the spool is left "
        "on disk (exit 3) (default 10)",
    )
    parser.set_defaults(handler=run)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, start=1):
        line = raw.strip()
        if line:
            yield number, line


_Execution = tuple[str, str]  # (resource group, execution id): what a fragment is routed by


class _Lines:
    """Checks every line; packs simple points per (group, execution) into fragments (the
    producers' one :class:`~metricrelay.producer.packing.Packer`)."""

    def __init__(self, default_group: str) -> None:
        self.default_group = default_group
        self.open: dict[_Execution, Packer] = {}  # in the order their fragments were begun
        self.ready: list[tuple[_Execution, bytes]] = []
        self.bad = 0
        self.points = 0

    def take(self, number: int, line: bytes) -> None:
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return self._refuse(number, f"not JSON ({exc})")
        if isinstance(document, dict) and document.keys() >= _POINT_KEYS:
            document = {
                "resourceGroup": document.get("resourceGroup"),
                "executionId": document.get("executionId"),
                "metrics": [{k: v for k, v in document.items() if k not in _ENVELOPE}],
            }
        decoded = decode_entry(
            orjson.dumps(document), entry_ms=0, default_resource_group=self.default_group
        )
        if decoded.problems:
            return self._refuse(number, "; ".join(p.message for p in decoded.problems))
        if (oversized := oversized_item(document)) is not None:  # never sendable: not queued
            return self._refuse(number, oversized)
        assert decoded.fragment is not None
        key = (decoded.fragment.resource_group, decoded.fragment.execution_id)
        document["resourceGroup"] = key[0]
        if set(document) - {"resourceGroup", "executionId", "metrics"}:
            self.ready.append((key, orjson.dumps(document)))  # a full fragment: written as it is
        else:
            self._pack(key, document.get("metrics") or [])
        self.points += len(decoded.fragment.metrics)
        return None

    def _pack(self, key: _Execution, metrics: list[dict[str, Any]]) -> None:
        packer = self.open.get(key)
        if packer is None:
            packer = self.open[key] = Packer(*key)
        for item in metrics:
            packer.add_metric(item)
        closed = packer.take()
        if closed:
            self.ready += [(key, data) for data, _ in closed]
            # what is left open begins a new fragment: it is flushed after those begun before
            del self.open[key]
            if packer.pending:
                self.open[key] = packer

    def _refuse(self, number: int, why: str) -> None:
        self.bad += 1
        print(f"line {number}: {why}", file=sys.stderr)

    def flush(self) -> None:
        for key, packer in self.open.items():
            packer.close()
            self.ready += [(key, data) for data, _ in packer.take()]
        self.open.clear()


_ENVELOPE: Final = frozenset({"executionId", "resourceGroup"})


class _Sink:
    """Where the fragments go: Redis, else (while it is away) the disk spool, replayed in order
    once it answers again — the Emitter's :class:`Diverter`, one spool for the whole input."""

    def __init__(self, client: Any, keys: Keys, settings: EmitterSettings, directory: Path) -> None:
        self.keys = keys
        self.directory = directory
        self.entries = 0  # fragments written or spooled
        self.diverter = Diverter(
            client,
            directory=directory,
            execution_id=SPOOL_NAME,
            max_bytes=settings.spool_max_bytes,
            fsync=settings.spool_fsync,
            on_ids=lambda ids: None,
        )

    def write(self, fragments: list[tuple[_Execution, bytes]], patience: float) -> bool:
        """Into Redis or the spool, behind what is spooled (and what dead ``emit``s left);
        False when neither took them within ``patience`` seconds."""
        if not fragments:
            return True
        # Every fragment here passed decode_entry, so it has a valid executionId and a
        # resource group: always routable (a line without one was refused as a bad line).
        keys = self.keys
        records = [(keys.route(*execution).events, data) for execution, data in fragments]
        self.diverter.drain()
        give_up = time.monotonic() + patience
        where, _ = self.diverter.deliver(
            records, pressure=False, stop=lambda: time.monotonic() > give_up
        )
        if where == "stopped":
            return False
        self.entries += len(records)
        return True

    def finish(self, wait: float) -> int:
        """Replay what is spooled; give up once Redis stayed away ``wait`` seconds. The
        fragments left on disk (the spool's files are deleted when there are none)."""
        diverter = self.diverter
        deadline = time.monotonic() + wait
        while diverter.spooled:
            before = diverter.spooled
            diverter.drain()
            if diverter.spooled < before:
                deadline = time.monotonic() + wait  # Redis answers: replaying
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.05)  # Redis is tried again on the Diverter's backoff, not sooner
        return diverter.close()[0]


def run(args: argparse.Namespace) -> int:
    from metricrelay.connection import sync_client  # noqa: PLC0415
    from metricrelay.layout import events_pattern  # noqa: PLC0415
    from metricrelay.producer.spool import default_directory  # noqa: PLC0415
    from metricrelay.settings import Settings  # noqa: PLC0415

    fields = {"redis_url": args.redis_url, "prefix": args.prefix, "shards": args.shards}
    fields |= {"resource_group": args.resource_group, "cluster": args.cluster}
    fields |= {"spool_dir": args.spool_dir}
    settings = Settings.from_sources({k: v for k, v in fields.items() if v is not None})
    client = sync_client(
        settings.redis.redis_url,
        cluster=settings.redis.cluster,
        timeout=settings.redis.redis_timeout,
    )
    directory = default_directory(settings.emitter.spool_dir)
    sink = _Sink(client, settings.keys(), settings.emitter, directory)
    packer = _Lines(settings.api.resource_group)
    started = time.monotonic()
    stuck = _read(args, packer, sink)
    left = sink.finish(args.wait)
    seconds = time.monotonic() - started
    events = events_pattern([settings.keys()])
    if stuck is not None:
        line, lost = stuck
        print(
            f"stopped at line {line}: Redis unreachable and the spool in {directory} full or "
            f"off (METRICRELAY_SPOOL_MAX_BYTES) for {args.wait:g}s; the last {lost} entries "
            "read and the lines after were not written",
            file=sys.stderr,
        )
    written = sink.entries - left
    print(
        f"{packer.points} points in {written} entries written to {events} in {seconds:.2f}s; "
        f"{packer.bad} bad line(s) skipped",
        file=sys.stderr,
    )
    if left:
        print(
            f"Redis unreachable: {left} entries wait in the spool in {directory}, not yet in "
            f"Redis; `metricrelay spool replay {directory}` (or the next `metricrelay emit`) "
            "sends them",
            file=sys.stderr,
        )
    if packer.bad or stuck is not None:
        return EXIT_BAD_LINES
    return EXIT_SPOOLED if left else 0


def _read(args: argparse.Namespace, packer: _Lines, sink: _Sink) -> tuple[int, int] | None:
    """Every line into the sink; None, or where it could take no more (Redis away and the
    spool full or off): the line's number and the entries it did not take."""
    progress = _progress_bar(args)
    number = 0
    try:
        for number, line in _lines(args.file):
            packer.take(number, line)
            if len(packer.ready) >= _BATCH:
                if not sink.write(packer.ready, args.wait):
                    return number, len(packer.ready)
                packer.ready = []
            progress.update(1) if progress is not None else None
        packer.flush()
        return None if sink.write(packer.ready, args.wait) else (number, len(packer.ready))
    finally:
        if progress is not None:
            progress.close()


def _progress_bar(args: argparse.Namespace) -> Any:
    """A tqdm bar of lines read, on a terminal only (never in logs or pipes)."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(unit=" lines", file=sys.stderr)
