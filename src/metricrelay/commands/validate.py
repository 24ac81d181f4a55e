"""``metricrelay validate``: check event-stream fragments the way the worker will, before XADD."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from metricrelay.codec import decode_entry

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check fragments (one JSON document per line) against the worker's rules",
        description=(
            "Reads fragments, one JSON document per line, from FILE (or standard input) and "
            "reports every item the worker would dead-letter as 'invalid'. Exit 1 if any."
        ),
    )
    parser.add_argument("file", nargs="?", type=argparse.FileType("rb"), default=sys.stdin.buffer)
    parser.add_argument("--resource-group", default="default", help="the worker's default group")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    now_ms = int(time.time() * 1000)
    bad = items = 0
    for number, line in enumerate(args.file, start=1):
        if not line.strip():
            continue
        decoded = decode_entry(
            line.rstrip(b"\r\n"), entry_ms=now_ms, default_resource_group=args.resource_group
        )
        if decoded.fragment is not None:
            items += decoded.fragment.item_count()
        for problem in decoded.problems:
            bad += 1
            print(f"line {number}: {problem.message}")
    print(f"{items} valid item(s), {bad} problem(s)", file=sys.stderr)
    return 1 if bad else 0
