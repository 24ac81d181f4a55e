"""What every benchmark reports the same way: the spread of a figure over runs, a percentile, and
the JSON file under ``bench/results/`` with a description of the machine it was measured on."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any


def spread(values: list[float], digits: int | None = None) -> dict[str, float]:
    """Median, min and max of a figure over the runs (rounded to ``digits`` when given)."""
    figures = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if digits is None:
        return figures
    return {name: round(value, digits) for name, value in figures.items()}


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def write_results(path: Path, out: dict[str, Any], **machine: Any) -> None:
    """``out`` as JSON under ``machine``: this machine's Python, architecture and cores, and
    whatever the benchmark adds (its sizes, runs, settings)."""
    described = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **machine,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": described, **out}, indent=2) + "\n")
    print(f"wrote {path}")
