"""Run the standard benchmark set, one harness after another, each printing its own table."""

from __future__ import annotations

import importlib
import sys

# Each harness is a module of this package exposing ``main(argv: list[str]) -> int``.
STANDARD: tuple[str, ...] = (
    "bench.pipeline",
    "bench.producer",
    "bench.spool",
    "bench.training",
    "bench.api_patch",
    "bench.worker",
    "bench.cluster",
    "bench.remote_api",
    "bench.outage",
)


def main(argv: list[str]) -> int:
    """``python -m bench [NAME ...] [--flag ...]``: from the first flag on, the arguments go to
    every chosen harness (``python -m bench worker --full``)."""
    if argv[:1] in (["-h"], ["--help"]):  # not a harness flag: say what there is
        print(main.__doc__)
        print("harnesses:", " ".join(name.removeprefix("bench.") for name in STANDARD))
        return 0
    first_flag = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, flags = argv[:first_flag], argv[first_flag:]
    chosen = [f"bench.{name}" for name in names] or list(STANDARD)
    status = 0
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        status |= importlib.import_module(name).main(flags)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
