"""The ``metricrelay`` program: one parser, a subcommand per job, outcomes as exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from metricrelay import __version__

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

# Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
# ``handler`` as a default; importing stays lazy so ``metricrelay --help`` is instant.
_SUBCOMMANDS: tuple[str, ...] = (
    "metricrelay.commands.validate",
    "metricrelay.commands.demo",
    "metricrelay.commands.worker",
    "metricrelay.commands.api",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricrelay",
        description="Relay training metrics through Redis to SAP AI Core's metrics API.",
    )
    parser.add_argument("--version", action="version", version=f"metricrelay {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _SUBCOMMANDS:
        module = __import__(module_name, fromlist=["register"])
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
