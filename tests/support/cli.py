"""``python -m metricrelay ...`` as a child process, as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def run_cli(
    *argv: str, given: bytes = b"", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The command's exit code and output; ``given`` is its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "metricrelay", *argv],
        input=given.decode(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
