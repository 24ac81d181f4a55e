"""``metricrelay emit``: JSON lines (fragments or simple points) from a file or stdin → stream.

Simple points ``{"executionId", "name", "value", "step"}`` (optionally ``timestamp``,
``labels``, ``resourceGroup``) are packed per execution into fragments of up to 1000 metrics;
fragments are validated and written as they are. Bad lines are reported with their number and
skipped; the exit code is 1 if there was any. With ``METRICRELAY_SHARDS`` > 1 each fragment goes
to the stream of its execution's shard (keys.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, Final

import orjson

from metricrelay.codec import decode_entry
from metricrelay.keys import Keys
from metricrelay.producer.packing import Packer

__all__ = ["register", "run"]

_BATCH: Final = 500  # XADDs per pipeline round trip
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
    parser.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    from metricrelay.connection import sync_client  # noqa: PLC0415
    from metricrelay.layout import events_pattern  # noqa: PLC0415
    from metricrelay.settings import Settings  # noqa: PLC0415

    fields = {"redis_url": args.redis_url, "prefix": args.prefix, "shards": args.shards}
    fields |= {"resource_group": args.resource_group, "cluster": args.cluster}
    settings = Settings.from_sources({k: v for k, v in fields.items() if v is not None})
    client = sync_client(
        settings.redis.redis_url,
        cluster=settings.redis.cluster,
        timeout=settings.redis.redis_timeout,
    )
    keys = settings.keys()
    events = events_pattern([keys])
    packer = _Lines(settings.api.resource_group)
    started, written = time.monotonic(), 0
    progress = _progress_bar(args)
    for number, line in _lines(args.file):
        packer.take(number, line)
        if len(packer.ready) >= _BATCH:
            written += _write(client, keys, packer.ready)
            packer.ready = []
        progress.update(1) if progress is not None else None
    packer.flush()
    written += _write(client, keys, packer.ready)
    if progress is not None:
        progress.close()
    seconds = time.monotonic() - started
    print(
        f"{packer.points} points in {written} entries written to {events} in {seconds:.2f}s; "
        f"{packer.bad} bad line(s) skipped",
        file=sys.stderr,
    )
    return 1 if packer.bad else 0


def _write(client: Any, keys: Keys, fragments: list[tuple[_Execution, bytes]]) -> int:
    if not fragments:
        return 0
    # Not a transaction: fragments of one batch go to many shards (slots), and a cluster
    # pipeline sends each node its part.
    pipe = client.pipeline(transaction=False)
    for (group, execution), data in fragments:
        # Every fragment here passed decode_entry, so it has a valid executionId and a
        # resource group: always routable. (A line without one was refused as a bad line
        # above, so no shard-0 fall-back is needed here.)
        pipe.xadd(keys.route(group, execution).events, {"resource": data})
    pipe.execute()
    return len(fragments)


def _progress_bar(args: argparse.Namespace) -> Any:
    """A tqdm bar of lines read, on a terminal only (never in logs or pipes)."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(unit=" lines", file=sys.stderr)
