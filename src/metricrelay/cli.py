"""The ``metricrelay`` program: one parser, a subcommand per job, outcomes as exit codes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence

from metricrelay import __version__
from metricrelay.logs import LOG_FORMATS, configure_logging

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

# Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
# ``handler`` as a default; importing stays lazy so ``metricrelay --help`` is instant.
_SUBCOMMANDS: tuple[str, ...] = (
    "metricrelay.commands.validate",
    "metricrelay.commands.demo",
    "metricrelay.commands.worker",
    "metricrelay.commands.api",
    "metricrelay.commands.view",
    "metricrelay.commands.status",
    "metricrelay.commands.replay",
    "metricrelay.commands.dead",
    "metricrelay.commands.emit",
    "metricrelay.commands.ingest",
    "metricrelay.commands.spool",
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
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="text (default) or json: one object per line (also METRICRELAY_LOG_FORMAT)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _SUBCOMMANDS:
        module = __import__(module_name, fromlist=["register"])
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Read here rather than in Settings: logging must work before (and when) settings fail.
    log_format = args.log_format or os.environ.get("METRICRELAY_LOG_FORMAT") or "text"
    if log_format not in LOG_FORMATS:
        parser.error(f"METRICRELAY_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    configure_logging(args.log_level, log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
