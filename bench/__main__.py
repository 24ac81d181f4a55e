"""Run the standard benchmark set, one harness after another, each printing its own table."""

from __future__ import annotations

import importlib
import sys

# Each harness is a module of this package exposing ``main(argv: list[str]) -> int``.
STANDARD: tuple[str, ...] = ("bench.pipeline", "bench.producer", "bench.api_patch")


def main(argv: list[str]) -> int:
    chosen = [f"bench.{name}" for name in argv] or list(STANDARD)
    status = 0
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        status |= importlib.import_module(name).main([])
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
