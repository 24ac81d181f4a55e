"""``metricrelay dead list|show|purge``: inspect dead letters, and delete them with confirmation.

With several dead-letter streams in play (shards), ids are shown and taken as ``<shard>/<id>``.
"""

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
from metricrelay.keys import ShardKeys
from metricrelay.layout import dead_pattern, layouts, shards_in_play
from metricrelay.ops.dead import (
    DeadFilter,
    DeadRecord,
    DeadScan,
    fetch,
    parse_ref,
    purge_refs,
    record_json,
)
from metricrelay.ops.replay_lock import ReplayBusy, ReplayLock, default_holder
from metricrelay.ops.table import format_table
from metricrelay.replies import id_key
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
    show.add_argument(
        "id",
        help="its id in the dead-letter stream, e.g. 1700000000000-0; with several shards "
        "<shard>/<id>, e.g. 3of8/1700000000000-0 (as `dead list` shows it)",
    )
    show.add_argument("--json", action="store_true", help="a JSON object on stdout")
    show.set_defaults(handler=run_show)
    purging = actions.add_parser(
        "purge",
        help="delete the dead letters the filters select (asks first)",
        description="Without --yes, asks on the terminal; refuses when there is none.",
    )
    add_redis_flags(purging)
    add_filter_flags(purging)
    purging.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="only these dead letters (ids as `dead list` shows them; the filters still apply)",
    )
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
    shards = shards_in_play(settings)
    try:
        refs = [parse_ref(text, shards) for text in getattr(args, "ids", None) or ()]
    except ValueError as exc:
        print(f"metricrelay dead: {exc}", file=sys.stderr)
        return EXIT_ERROR, None, []

    async def main(client: Any) -> list[dict[str, Any]] | None:
        if refs:
            return await _chosen(client, refs, flt, qualified=len(shards) > 1)
        return [record_json(record) async for record in DeadScan(client, shards, flt).records()]

    code, summaries = run_with_redis(settings, args.timeout, main)
    if not code and summaries is None:
        return EXIT_ERROR, None, []  # _chosen() named the id that is not there
    return code, settings, summaries or []


def _within(flt: DeadFilter, dead_id: str) -> bool:
    low = flt.start == "-" or id_key(dead_id) >= id_key(flt.start)
    return low and (flt.end == "+" or id_key(dead_id) <= id_key(flt.end, upper=True))


async def _chosen(
    client: Any, refs: list[tuple[ShardKeys, str]], flt: DeadFilter, *, qualified: bool
) -> list[dict[str, Any]] | None:
    """The named letters the filters keep; None (and a message) if one does not exist: a
    purge of a list with a typo in it deletes nothing."""
    chosen: list[dict[str, Any]] = []
    for shard, dead_id in refs:
        name = f"{shard.name}/{dead_id}" if qualified else dead_id
        try:
            record = await fetch(client, shard, dead_id, qualified=qualified)
        except ValueError as exc:  # a letter some other tool wrote, with an unknown reason
            print(
                f"metricrelay dead: dead letter {name} in {shard.dead} is unreadable ({exc}); "
                f"it is not a letter of metricrelay's format: inspect it with "
                f"XRANGE {shard.dead} {dead_id} {dead_id}, delete it with XDEL",
                file=sys.stderr,
            )
            return None
        if record is None:
            print(f"metricrelay dead: no dead letter {name} in {shard.dead}", file=sys.stderr)
            return None
        if flt.matches(record.letter, record.info) and _within(flt, dead_id):
            chosen.append(record_json(record))
    return chosen[: flt.limit] if flt.limit is not None else chosen


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
            f"id:             {record.ref}",
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
    shards = shards_in_play(settings)
    try:
        shard, dead_id = parse_ref(args.id, shards)
    except ValueError as exc:
        print(f"metricrelay dead show: {exc}", file=sys.stderr)
        return EXIT_ERROR

    async def main(client: Any) -> DeadRecord | None:
        return await fetch(client, shard, dead_id, qualified=len(shards) > 1)

    try:
        code, record = run_with_redis(settings, args.timeout, main)
    except ValueError as exc:  # a letter some other tool wrote, with an unknown reason
        print(f"metricrelay dead show: {args.id} is unreadable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if code:
        return code
    if record is None:
        print(f"metricrelay dead show: no dead letter {args.id} in {shard.dead}", file=sys.stderr)
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
    where = dead_pattern(layouts(settings))
    if not summaries:
        print("no dead letters match: nothing to purge", file=sys.stderr)
        return 0
    if not args.yes and not _confirmed(len(summaries), where):
        print("nothing deleted", file=sys.stderr)
        return EXIT_ERROR
    # only what was counted and confirmed: letters arriving meanwhile are not touched
    shards = shards_in_play(settings)
    refs = [parse_ref(summary["id"], shards) for summary in summaries]

    async def main(client: Any) -> int:
        # not while a replay moves letters: it may just have appended the ones purged here
        async with ReplayLock(client, settings.keys().replay_lock, holder=default_holder("purge")):
            return await purge_refs(client, refs)

    try:
        code, deleted = run_with_redis(settings, args.timeout, main)
    except ReplayBusy as exc:
        print(f"metricrelay dead purge: {exc}; nothing deleted", file=sys.stderr)
        return EXIT_ERROR
    if code:
        return code
    print(f"deleted {deleted} dead letter(s) from {where}")
    return 0
