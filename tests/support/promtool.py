"""Where Prometheus's ``promtool`` is: beside the interpreter (``make test`` unpacks it from
Debian's ``prometheus`` package into ``.venv/bin``), else on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["NO_PROMTOOL", "PROMTOOL"]

PROMTOOL = shutil.which("promtool", path=str(Path(sys.executable).parent)) or shutil.which(
    "promtool"
)
NO_PROMTOOL = "no promtool (make test fetches it where apt-get is; Debian: prometheus)"
