"""What the operator commands (status, replay, dead) share: flags, settings, Redis, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError

from metricrelay.connection import REDIS_UNAVAILABLE, async_client
from metricrelay.deadletter import Reason
from metricrelay.errors import ConfigError
from metricrelay.ops.dead import DeadFilter, parse_bound
from metricrelay.settings import Settings, redact_url

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "add_filter_flags",
    "add_redis_flags",
    "build_filter",
    "load_settings",
    "non_negative",
    "run_with_redis",
    "settings_or_exit",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1

# flag → settings field, as in `metricrelay worker`: each also comes from METRICRELAY_<FIELD>
_REDIS_FLAGS: Final = (
    ("--redis-url", "redis_url", str),
    ("--prefix", "prefix", str),
    ("--resource-group", "resource_group", str),
    ("--shards", "shards", int),
    ("--drain-shards", "drain_shards", int),
)
_FLAG_FIELDS: Final = ("cluster",)  # store_true flags: None unless given, so the env still counts


def non_negative(text: str) -> int:
    """An argparse type: an integer, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_redis_flags(parser: argparse.ArgumentParser, *extra: tuple[str, str, type]) -> None:
    """``--redis-url``, ``--prefix``, ``--resource-group``, ``--shards``, ``--drain-shards``,
    ``--cluster`` (plus ``extra`` settings flags)."""
    for flag, field, kind in (*_REDIS_FLAGS, *extra):
        parser.add_argument(flag, dest=field, type=kind, default=None)
    parser.add_argument(
        "--cluster",
        dest="cluster",
        action="store_true",
        default=None,
        help="Redis is a Redis Cluster (also implied by a redis+cluster:// URL)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for Redis (default: METRICRELAY_REDIS_TIMEOUT, else 10)",
    )


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    """The dead-letter filters shared by ``replay`` and ``dead list|purge``."""
    parser.add_argument(
        "--reason",
        action="append",
        choices=[reason.value for reason in Reason],
        help="only dead letters with this reason (repeatable)",
    )
    parser.add_argument("--execution", help="only dead letters of this executionId")
    parser.add_argument(
        "--since", help="dead-lettered at or after: RFC 3339 time or dead-letter stream id"
    )
    parser.add_argument(
        "--until", help="dead-lettered at or before: RFC 3339 time or dead-letter stream id"
    )
    parser.add_argument("--limit", type=non_negative, help="act on at most this many")


def build_filter(args: argparse.Namespace) -> DeadFilter:
    """The filter the flags describe; ValueError names a bad --since/--until."""
    return DeadFilter(
        reasons=frozenset(Reason(r) for r in args.reason or ()),
        execution=args.execution,
        start=parse_bound(args.since, upper=False) if args.since else "-",
        end=parse_bound(args.until, upper=True) if args.until else "+",
        limit=args.limit,
    )


def load_settings(args: argparse.Namespace, *extra: tuple[str, str, type]) -> Settings:
    """Settings from the environment with these flags on top (ConfigError on bad values)."""
    fields = [field for _, field, _ in (*_REDIS_FLAGS, *extra)] + list(_FLAG_FIELDS)
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    return Settings.from_sources(overrides)


def run_with_redis(
    settings: Settings, timeout: float | None, main: Callable[[Any], Awaitable[T]]
) -> tuple[int, T | None]:
    """Run ``main(client)`` on a fresh connection; Redis trouble becomes exit code 1 and a
    message naming the server (password redacted), never a traceback. ``timeout`` (seconds
    to connect and for each reply) defaults to ``settings.redis.redis_timeout``."""

    async def session() -> T:
        client = async_client(
            settings.redis.redis_url,
            cluster=settings.redis.cluster,
            timeout=settings.redis.redis_timeout if timeout is None else timeout,
        )
        try:
            return await main(client)
        finally:
            await client.aclose()

    where = redact_url(settings.redis.redis_url)
    try:
        return EXIT_OK, asyncio.run(session())
    except REDIS_UNAVAILABLE as exc:
        log.error("cannot reach Redis at %s: %s", where, exc)
    except RedisError as exc:
        log.error("Redis at %s answered with an error: %s", where, exc)
    return EXIT_ERROR, None


def settings_or_exit(args: argparse.Namespace, *extra: tuple[str, str, type]) -> Settings | None:
    """:func:`load_settings`, logging a ConfigError instead of raising it."""
    try:
        return load_settings(args, *extra)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return None
