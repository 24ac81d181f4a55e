"""``metricrelay status``: lag, pending, consumers, backlog, dead letters, streams nobody reads;
exit 2 over a limit or with entries in a stream nobody reads."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import orjson

from metricrelay.commands._ops import (
    EXIT_ERROR,
    add_redis_flags,
    non_negative,
    run_with_redis,
    settings_or_exit,
)
from metricrelay.layout import (
    dead_pattern,
    events_pattern,
    layouts,
    shards_in_play,
    streams_in_play,
)
from metricrelay.ops.status import redis_memory, to_json
from metricrelay.ops.status_total import gather_all
from metricrelay.ops.table import format_table
from metricrelay.relay.stray import find_stray
from metricrelay.settings import redact_url

__all__ = ["EXIT_THRESHOLD", "register", "render", "run"]

EXIT_THRESHOLD: Final = 2
_TOP: Final = 10  # rows per table on a terminal; --json has them all

_EPILOG = """\
exit codes: 0 all within the thresholds; 1 an error (Redis unreachable, bad settings);
2 --max-lag or --max-pending exceeded, or entries wait in the event streams of another
shard layout, which no worker reads (argparse also exits 2 on a usage error).
--json prints one document (schema 1, keys documented in the README, "Operations").
With several shards (METRICRELAY_SHARDS, and METRICRELAY_DRAIN_SHARDS while changing it) the
totals add up every shard and "shards" has one row per shard."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show stream lag, pending entries, consumers, backlog and dead letters",
        description="Reads the relay's state from Redis. Settings as for `metricrelay worker`.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_redis_flags(parser)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--max-lag", type=non_negative, help="exit 2 when the lag is above this")
    parser.add_argument(
        "--max-pending", type=non_negative, help="exit 2 when pending is above this"
    )
    parser.add_argument(
        "--scan-limit",
        type=non_negative,
        default=10_000,
        help="read at most this many pending entries, undelivered entries and dead letters "
        "each, for the per-execution tables (default 10000; shared out among shards); "
        "counts say when it was reached",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    if settings is None:
        return EXIT_ERROR
    in_play = layouts(settings)
    # a fallback lag count must be able to see past --max-lag, or exit 0 could be a guess
    lag_scan_min = 0 if args.max_lag is None else args.max_lag + 1

    async def main(client: Any) -> dict[str, Any]:
        overview = await gather_all(
            client,
            shards_in_play(settings),
            events_key=events_pattern(in_play),
            dead_key=dead_pattern(in_play),
            default_resource_group=settings.api.resource_group,
            scan_limit=args.scan_limit,
            lag_scan_min=lag_scan_min,
        )
        payload = to_json(
            overview.total,
            redis=redact_url(settings.redis.redis_url),
            max_lag=args.max_lag,
            max_pending=args.max_pending,
            shards=overview.shards,
            stray=await find_stray(client, settings.redis.prefix, streams_in_play(settings)),
        )
        payload["memory"] = await redis_memory(client)
        if payload["memory"]["full"]:
            payload["thresholds"]["exceeded"].append("redis_full")
        return payload

    code, payload = run_with_redis(settings, args.timeout, main)
    if payload is None:
        return code
    if args.json:
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(payload) + "\n")
    return EXIT_THRESHOLD if payload["thresholds"]["exceeded"] else 0


def _seconds(ms: int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s"


def _lag_text(group: dict[str, Any]) -> str:
    source = group["lag_source"]
    if source == "scan_capped":
        return f"at least {group['lag']} (counted; the scan limit was reached)"
    if source == "scan":
        return f"{group['lag']} (counted: Redis could not tell)"
    if source == "no_group":
        return f"{group['lag']} (no consumer group yet: no worker has run)"
    return str(group["lag"])


def _header(payload: dict[str, Any]) -> list[str]:
    stream, group = payload["stream"], payload["group"]
    span = f" ({stream['first_id']} … {stream['last_id']})" if stream["length"] else ""
    lines = [
        f"metricrelay status at {payload['now']} — {payload['redis']}",
        f"stream   {stream['key']}: {stream['length']} entries{span}",
        f"group    {group['name']}: lag {_lag_text(group)}, pending {group['pending']}",
    ]
    if len(payload["shards"]) == 1:
        owner = payload["shards"][0]["owner"]
        lines.append(f"owner    {owner or 'none: no worker holds the lease of this stream'}")
    memory = payload.get("memory")
    if memory and memory["full"]:
        lines.append(
            f"REDIS IS FULL: {memory['used']} bytes used of maxmemory {memory['maxmemory']} "
            f"({memory['policy']}): producers' XADDs and the workers' dead letters are refused"
        )
    if group["oldest_pending_id"] is not None:
        lines.append(
            f"oldest pending {group['oldest_pending_id']}: produced "
            f"{_seconds(group['oldest_pending_age_ms'])} ago, "
            f"idle {_seconds(group['oldest_pending_idle_ms'])}"
        )
    return lines


def _shard_table(payload: dict[str, Any]) -> list[str]:
    """One row per shard, when there is more than one (the header has the only one's)."""
    shards = payload["shards"]
    if len(shards) < 2:
        return []
    rows = [
        [s["name"], s["owner"] or "-", s["length"], s["lag"], s["pending"], s["dead"]]
        for s in shards
    ]
    headers = ("SHARD", "OWNER", "LENGTH", "LAG", "PENDING", "DEAD")
    return ["", format_table(headers, rows)]


def _tables(payload: dict[str, Any]) -> list[str]:
    group, backlog, dead = payload["group"], payload["backlog"], payload["dead"]
    out = _shard_table(payload)
    consumers = [[c["name"], c["pending"], _seconds(c["idle_ms"])] for c in group["consumers"]]
    if consumers:
        out += ["", format_table(("CONSUMER", "PENDING", "IDLE"), consumers)]
    rows = [
        [e["resource_group"], e["execution_id"], e["pending"], e["undelivered"], e["points"]]
        for e in backlog["executions"][:_TOP]
    ]
    capped = ", scan limit reached" if backlog["capped"] else ""
    out += ["", f"backlog by execution ({backlog['scanned']} entries read{capped})"]
    if rows:
        headers = ("RESOURCE GROUP", "EXECUTION", "PENDING", "UNDELIVERED", "POINTS")
        out.append(format_table(headers, rows))
    capped = ", scan limit reached" if dead["capped"] else ""
    out += ["", f"dead letters {dead['key']}: {dead['length']} ({dead['scanned']} read{capped})"]
    reasons = [[reason, count] for reason, count in dead["by_reason"].items() if count]
    if reasons:
        out.append(format_table(("REASON", "COUNT"), reasons))
        by_execution = [
            [e["resource_group"], e["execution_id"], e["count"]] for e in dead["by_execution"]
        ][:_TOP]
        out += ["", format_table(("RESOURCE GROUP", "EXECUTION", "DEAD"), by_execution)]
    return out


def _stray(payload: dict[str, Any]) -> list[str]:
    """Streams no worker reads, with what to do about them."""
    stray = payload["stray"]
    if not stray:
        return []
    rows = [[one["key"], one["kind"], one["length"]] for one in stray]
    return [
        "",
        "streams of another shard layout, which no worker reads (a producer, or these",
        "workers, with another METRICRELAY_SHARDS? METRICRELAY_DRAIN_SHARDS=<that count>",
        "on the workers drains them):",
        format_table(("STRAY STREAM", "KIND", "LENGTH"), rows),
    ]


def _verdict(payload: dict[str, Any]) -> str:
    limits = payload["thresholds"]
    group = payload["group"]
    checks = [
        (name, group[name], limits[f"max_{name}"])
        for name in ("lag", "pending")
        if limits[f"max_{name}"] is not None
    ]
    parts = [
        f"{name} {value} {'>' if value > bound else '<='} {bound}" for name, value, bound in checks
    ]
    if "stray" in limits["exceeded"]:
        waiting = sum(one["length"] for one in payload["stray"] if one["kind"] == "events")
        parts.append(f"{waiting} entries wait in event streams no worker reads")
    if "redis_full" in limits["exceeded"]:
        parts.append("redis is full (maxmemory reached)")
    if not parts:
        return "no thresholds given (--max-lag, --max-pending)"
    word = "ALERT" if limits["exceeded"] else "OK"
    return f"{word}: " + ", ".join(parts)


def render(payload: dict[str, Any]) -> str:
    """The terminal form of a ``to_json`` document."""
    lines = [*_header(payload), *_tables(payload), *_stray(payload)]
    return "\n".join([*lines, "", _verdict(payload)])
