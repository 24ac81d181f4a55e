"""``metricrelay spool replay [DIR]``: send what Emitters left in their disk spools (issue 18)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from tqdm import tqdm

from metricrelay.commands._ops import (
    EXIT_ERROR,
    EXIT_OK,
    settings_or_exit,
)
from metricrelay.connection import sync_client
from metricrelay.producer.spool import default_directory
from metricrelay.producer.spool_replay import Leftover, Outcome, claim, find_leftovers, replay
from metricrelay.producer.spool_replay import summarize as summarize_leftover
from metricrelay.settings import redact_url

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "spool",
        help="replay what Emitters left in their disk spools while Redis was away",
        description=(
            "Emitters spool fragments on local disk while Redis is unreachable. 'spool replay' "
            "sends the spools of processes that are gone, in order, and deletes them. Exit 1 "
            "when something could not be replayed (Redis down, a corrupt record, a live owner)."
        ),
    )
    actions = parser.add_subparsers(dest="spool_action", metavar="ACTION", required=True)
    again = actions.add_parser(
        "replay",
        help="XADD leftover spools to their streams, oldest first",
        description="XADD the records of leftover spools in order, then delete them.",
    )
    again.add_argument(
        "directory",
        nargs="?",
        metavar="DIR",
        help="the spool directory (default: METRICRELAY_SPOOL_DIR, else the per-user cache)",
    )
    again.add_argument(
        "--execution",
        help="only the spools of this executionId's Emitters (a 'metricrelay emit' spool holds "
        "many executions and is replayed whole, without --execution)",
    )
    again.add_argument(
        "--dry-run", action="store_true", help="list executions, records and items; send nothing"
    )
    # the records name their streams: only where Redis is matters here
    again.add_argument("--redis-url", dest="redis_url", default=None)
    again.add_argument(
        "--cluster",
        action="store_true",
        default=None,
        help="Redis is a Redis Cluster (also implied by a redis+cluster:// URL)",
    )
    again.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for Redis (default: METRICRELAY_REDIS_TIMEOUT, else 10)",
    )
    again.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    if settings is None:
        return EXIT_ERROR
    directory = (
        Path(args.directory) if args.directory else default_directory(settings.emitter.spool_dir)
    )
    leftovers = find_leftovers(directory, args.execution)
    if not leftovers:
        print(f"no spools in {directory}", file=sys.stderr)
        return EXIT_OK
    if args.dry_run:
        return _dry_run(leftovers)
    timeout = settings.redis.redis_timeout if args.timeout is None else args.timeout
    redis = sync_client(settings.redis.redis_url, cluster=settings.redis.cluster, timeout=timeout)
    try:
        return _replay_all(redis, leftovers, redact_url(settings.redis.redis_url))
    finally:
        redis.close()


def _dry_run(leftovers: list[Leftover]) -> int:
    """Executions as the records name them (a spool of `metricrelay emit` holds many),
    each with its records and items; a spool's torn or corrupt end under its first one."""
    totals: dict[str, Outcome] = {}
    for leftover in leftovers:
        found = summarize_leftover(leftover)
        executions = found.executions or {leftover.execution_id: [0, 0]}
        for execution, (records, items) in executions.items():
            total = totals.setdefault(execution, Outcome())
            total.records += records
            total.items += items
        first = totals[next(iter(executions))]
        first.torn += found.torn
        first.corrupt += found.corrupt
    for execution, outcome in totals.items():
        print(f"{execution}\t{outcome.records} record(s)\t{outcome.items} item(s)")
        for problem in outcome.torn:
            print(f"  torn last record, would be skipped: {problem}")
        for problem in outcome.corrupt:
            print(f"  corrupt record, replay would stop: {problem}")
    return EXIT_ERROR if any(o.corrupt for o in totals.values()) else EXIT_OK


def _advance(bar: tqdm[Any], records: int) -> None:
    bar.update(records)


def _replay_all(redis: Any, leftovers: list[Leftover], where: str) -> int:
    total, busy = Outcome(), 0
    size = sum(summarize_leftover(leftover).records for leftover in leftovers)
    with tqdm(
        total=size, unit="record", desc="spool", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        for leftover in leftovers:
            with claim(leftover) as mine:
                if not mine:
                    busy += 1
                    log.warning("spool %s is in use by a live process: left alone", leftover.name)
                    continue
                try:
                    total.add(replay(redis, leftover, lambda n: _advance(bar, n)))
                except RedisError as exc:
                    log.error("cannot replay %s into Redis at %s: %s", leftover.name, where, exc)
                    return EXIT_ERROR
                except OSError as exc:
                    log.error("cannot read or update the spool %s: %s", leftover.name, exc)
                    return EXIT_ERROR
    for problem in total.torn:
        log.warning("skipped a torn last record: %s", problem)
    for problem in total.corrupt:
        log.error("a corrupt record stopped the replay (spool kept): %s", problem)
    print(f"replayed {total.records} record(s), {total.items} item(s)", file=sys.stderr)
    return EXIT_ERROR if total.corrupt or busy else EXIT_OK
