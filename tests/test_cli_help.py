"""Every command's ``--help`` as recorded in tests/cli_help/ (issue 15: a new layout changes no
command line). A deliberate change of a command's options updates its file in the same commit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECORDED = Path(__file__).resolve().parent / "cli_help"
COMMANDS = sorted(path.stem for path in RECORDED.glob("*.txt"))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_as_recorded(command: str) -> None:
    argv = [] if command == "main" else [command]
    env = {**os.environ, "COLUMNS": "100"}  # argparse wraps to the terminal's width
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", *argv, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert done.stdout == (RECORDED / f"{command}.txt").read_text()


def test_every_command_is_recorded() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
        timeout=60,
        check=True,
    )
    commands = done.stdout.split("  COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    listed = [line.split()[0] for line in commands.splitlines() if line[4:5].isalpha()]
    assert sorted([*listed, "main"]) == COMMANDS
