"""``metricrelay replay``: move dead letters back to the event stream once their cause is fixed."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from tqdm import tqdm

from metricrelay.commands._ops import (
    EXIT_ERROR,
    add_filter_flags,
    add_redis_flags,
    build_filter,
    run_with_redis,
    settings_or_exit,
)
from metricrelay.keys import Keys, ShardKeys
from metricrelay.layout import events_pattern, layouts
from metricrelay.ops.dead import DeadFilter
from metricrelay.ops.replay import ReplayPlan, ReplaySummary, replay
from metricrelay.ops.replay_lock import ReplayBusy, ReplayLock, ReplayLockLost
from metricrelay.relay.batching import Limits
from metricrelay.settings import Settings
from metricrelay.timestamps import format_utc

__all__ = ["register", "run"]

_EXTRA: Final = (("--max-body-bytes", "max_body_bytes", int),)

_DESCRIPTION = """\
Each selected dead letter is validated again and re-packed under today's limits
(METRICRELAY_MAX_BODY_BYTES and the API's count limits; a too_large body is re-split).
Valid parts are appended to the event stream for the worker; parts still invalid get a
new dead letter with the new reason. The original leaves the dead-letter stream only after
that append: a crash mid-replay loses nothing and duplicates at most the letter in hand.
With shards, letters of every dead-letter stream (also of METRICRELAY_DRAIN_SHARDS' layout)
go to the shard today's layout routes their execution to. One replay (or dead purge) runs at
a time: a second one exits with code 1 and names the holder of the lock (a dry run needs
none)."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="move dead letters back for delivery (revalidated, re-packed)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_redis_flags(parser, *_EXTRA)
    add_filter_flags(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would move; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print letters and summary as JSON")
    parser.set_defaults(handler=run)


def _plan_json(plan: ReplayPlan) -> dict[str, Any]:
    letter = plan.record.letter
    action = "unchanged" if plan.unchanged else ("move" if plan.fragments else "stay_dead")
    out: dict[str, Any] = {
        "id": plan.record.ref,
        "reason": letter.reason.value,
        "execution_id": plan.record.info.execution_id,
        "action": action,
        "fragments": len(plan.fragments),
        "items": plan.items,
        "still_dead": [{"reason": d.reason.value, "error": d.error} for d in plan.still_dead],
    }
    if plan.record.qualified and plan.destination is not None:
        out["to"] = plan.destination.name  # the shard of today's layout it goes to
    return out


def _plan_line(plan: ReplayPlan, dry_run: bool) -> str:
    record = plan.record
    head = f"{record.ref}  {record.letter.reason.value:<9}  {record.info.execution_id or '-'}"
    if plan.unchanged:
        return f"{head}  stays dead, unchanged: {record.letter.error}"
    verb = "would append" if dry_run else "appended"
    text = f"{head}  {verb} {len(plan.fragments)} fragment(s), {plan.items} item(s)"
    if record.qualified and plan.destination is not None and plan.fragments:
        text += f" to {plan.destination.name}"
    for letter in plan.still_dead:
        text += f"; still dead ({letter.reason.value}): {letter.error}"
    return text


def _summary_line(summary: ReplaySummary, key: str) -> str:
    moved = "would move" if summary.dry_run else "moved"
    return (
        f"{summary.examined} dead letter(s) examined, {summary.matched} matched: {moved} "
        f"{summary.moved} ({summary.fragments} fragment(s), {summary.items} item(s) to {key}); "
        f"{summary.redead} new dead letter(s) for parts still invalid; "
        f"{summary.unchanged} left unchanged"
        + (f"; {summary.unreadable} unreadable skipped" if summary.unreadable else "")
    )


async def _total(client: Any, sources: list[ShardKeys], flt: DeadFilter) -> int | None:
    """The progress bar's length when it is cheap to know (no time bounds)."""
    if flt.start != "-" or flt.end != "+":
        return None
    return sum([int(await client.xlen(shard.dead)) for shard in sources])


async def _replay(
    client: Any,
    keys: Keys,
    sources: list[ShardKeys],
    flt: DeadFilter,
    settings: Settings,
    *,
    dry_run: bool,
    on_plan: Callable[[ReplayPlan], None],
) -> ReplaySummary:
    # one replay at a time; a dry run changes nothing and needs no lock
    lock = None if dry_run else ReplayLock(client, keys.replay_lock)
    async with lock or contextlib.nullcontext():
        total = await _total(client, sources, flt)
        with tqdm(
            total=total,
            unit="letter",
            desc="replay",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),  # a bar only for a person watching
        ) as bar:
            return await replay(
                client,
                keys,
                flt,
                limits=Limits(max_body_bytes=settings.worker.max_body_bytes),
                default_resource_group=settings.api.resource_group,
                failed_at=format_utc(datetime.now(UTC)),
                dry_run=dry_run,
                sources=sources,
                on_examined=lambda: _advance(bar),
                on_plan=on_plan,
                guard=None if lock is None else lock.check,
            )


def _advance(bar: tqdm[Any]) -> None:
    bar.update(1)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args, *_EXTRA)
    if settings is None:
        return EXIT_ERROR
    try:
        flt = build_filter(args)
    except ValueError as exc:
        print(f"metricrelay replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    keys = settings.keys()  # where letters go: today's layout
    # where they come from: every layout in play, the draining one first — its letters are of
    # older entries, and an execution's letters must go back in the order they were written
    sources = [shard for layout in reversed(layouts(settings)) for shard in layout.all_shards()]
    letters: list[dict[str, Any]] = []
    moved = 0  # letters moved so far, for the message if the replay has to stop

    def on_plan(plan: ReplayPlan) -> None:
        nonlocal moved
        if not plan.unchanged:
            moved += 1
        if args.json:
            letters.append(_plan_json(plan))
        elif args.dry_run:
            tqdm.write(_plan_line(plan, dry_run=True), file=sys.stdout)

    async def main(client: Any) -> ReplaySummary:
        return await _replay(
            client, keys, sources, flt, settings, dry_run=args.dry_run, on_plan=on_plan
        )

    try:
        code, summary = run_with_redis(settings, args.timeout, main)
    except ReplayBusy as exc:
        print(f"metricrelay replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ReplayLockLost as exc:
        print(f"metricrelay replay: {exc} ({moved} letter(s) moved before)", file=sys.stderr)
        return EXIT_ERROR
    if summary is None:
        return code
    if args.json:
        document = {"summary": summary.as_json(), "letters": letters}
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_summary_line(summary, events_pattern([keys])))
    return 0
