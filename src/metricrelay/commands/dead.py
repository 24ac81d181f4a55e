"""``metricrelay dead list|show|purge``: inspect dead letters, and delete them with confirmation."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import orjson

from metricrelay.commands._ops import (
    EXIT_ERROR,
    add_filter_flags,
    add_redis_flags,
    build_filter,
    run_with_redis,
    settings_or_exit,
)
from metricrelay.keys import Keys
from metricrelay.ops.dead import DeadRecord, DeadScan, fetch, id_key, purge, record_json
from metricrelay.ops.table import format_table
from metricrelay.settings import Settings

__all__ = ["register", "run_list", "run_purge", "run_show"]

_ERROR_WIDTH: Final = 70


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dead", help="inspect dead letters (list, show) or delete them (purge)"
    )
    actions = parser.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="dead letters, oldest first, with filters")
    add_redis_flags(listing)
    add_filter_flags(listing)
    listing.add_argument("--json", action="store_true", help="a JSON array on stdout")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="one dead letter in full")
    add_redis_flags(show)
    show.add_argument("id", help="its id in the dead-letter stream, e.g. 1700000000000-0")
    show.add_argument("--json", action="store_true", help="a JSON object on stdout")
    show.set_defaults(handler=run_show)
    purging = actions.add_parser(
        "purge",
        help="delete the dead letters the filters select (asks first)",
        description="Without --yes, asks on the terminal; refuses when there is none.",
    )
    add_redis_flags(purging)
    add_filter_flags(purging)
    purging.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purging.set_defaults(handler=run_purge)


def _dump(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def _collect(args: argparse.Namespace) -> tuple[int, Settings | None, list[dict[str, Any]]]:
    """Settings, and the selected dead letters as summaries (their resources are not kept:
    memory stays small however large the letters are); a non-zero code on any error."""
    settings = settings_or_exit(args)
    if settings is None:
        return EXIT_ERROR, None, []
    try:
        flt = build_filter(args)
    except ValueError as exc:
        print(f"metricrelay dead: {exc}", file=sys.stderr)
        return EXIT_ERROR, None, []
    keys = Keys(settings.prefix)

    async def main(client: Any) -> list[dict[str, Any]]:
        return [record_json(record) async for record in DeadScan(client, keys, flt).records()]

    code, summaries = run_with_redis(settings, args.timeout, main)
    return code, settings, summaries or []


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_WIDTH else line[: _ERROR_WIDTH - 1] + "…"


def run_list(args: argparse.Namespace) -> int:
    code, settings, summaries = _collect(args)
    if code or settings is None:
        return code or EXIT_ERROR
    if args.json:
        _dump(summaries)
        return 0
    rows = [
        [
            s["id"],
            s["failed_at"],
            s["reason"],
            s["status"],
            s["execution_id"],
            sum(s["items"].values()),
            _short(s["error"]),
        ]
        for s in summaries
    ]
    headers = ("ID", "FAILED AT", "REASON", "STATUS", "EXECUTION", "ITEMS", "ERROR")
    if rows:
        print(format_table(headers, rows))
    print(f"{len(rows)} dead letter(s)", file=sys.stderr)
    return 0


def _show_text(record: DeadRecord) -> str:
    document = record_json(record, with_resource=True)
    items = document["items"]
    resource = document["resource"]
    body = (
        orjson.dumps(resource, option=orjson.OPT_INDENT_2).decode()
        if document["resource_is_json"]
        else f"(not JSON) {resource!r}"
    )
    return "\n".join(
        [
            f"id:             {record.id}",
            f"reason:         {document['reason']}",
            f"failed at:      {document['failed_at']}",
            f"status:         {document['status'] if document['status'] is not None else '-'}",
            f"attempts:       {document['attempts']}",
            f"source ids:     {', '.join(document['source_ids']) or '-'}",
            f"resource group: {document['resource_group'] or '-'}",
            f"execution:      {document['execution_id'] or '-'}",
            f"items:          {items['metrics']} metrics, {items['tags']} tags, "
            f"{items['customInfo']} customInfo ({document['resource_bytes']} bytes)",
            "error:",
            f"  {document['error']}",
            "resource:",
            body,
        ]
    )


def run_show(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    if settings is None:
        return EXIT_ERROR
    try:
        id_key(args.id)
    except ValueError as exc:
        print(f"metricrelay dead show: {exc}", file=sys.stderr)
        return EXIT_ERROR
    keys = Keys(settings.prefix)

    async def main(client: Any) -> DeadRecord | None:
        return await fetch(client, keys, args.id)

    try:
        code, record = run_with_redis(settings, args.timeout, main)
    except ValueError as exc:  # a letter some other tool wrote, with an unknown reason
        print(f"metricrelay dead show: {args.id} is unreadable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if code:
        return code
    if record is None:
        print(f"metricrelay dead show: no dead letter {args.id} in {keys.dead}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        _dump(record_json(record, with_resource=True))
    else:
        print(_show_text(record))
    return 0


def _confirmed(count: int, key: str) -> bool:
    """Ask on the terminal; never read a 'yes' from a pipe, where nobody is asked."""
    if not sys.stdin.isatty():
        print(
            f"metricrelay dead purge: refusing to delete {count} dead letter(s) without "
            "confirmation: standard input is not a terminal (pass --yes)",
            file=sys.stderr,
        )
        return False
    answer = input(f"Delete {count} dead letter(s) from {key}? This cannot be undone [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run_purge(args: argparse.Namespace) -> int:
    code, settings, summaries = _collect(args)
    if code or settings is None:
        return code or EXIT_ERROR
    keys = Keys(settings.prefix)
    if not summaries:
        print("no dead letters match: nothing to purge", file=sys.stderr)
        return 0
    if not args.yes and not _confirmed(len(summaries), keys.dead):
        print("nothing deleted", file=sys.stderr)
        return EXIT_ERROR
    # only what was counted and confirmed: letters arriving meanwhile are not touched
    ids = [summary["id"] for summary in summaries]

    async def main(client: Any) -> int:
        return await purge(client, keys, ids)

    code, deleted = run_with_redis(settings, args.timeout, main)
    if code:
        return code
    print(f"deleted {deleted} dead letter(s) from {keys.dead}")
    return 0
