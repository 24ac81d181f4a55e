"""Reading what the reference API stored, by metric name and rank label."""

from __future__ import annotations

import json
from typing import Any


def points(resource: dict[str, Any]) -> dict[tuple[str, str | None], list[int]]:
    """(metric name, rank label or None) → the sorted steps stored for it."""
    found: dict[tuple[str, str | None], list[int]] = {}
    for metric in resource["metrics"]:
        labels = {label["name"]: label["value"] for label in metric.get("labels") or []}
        found.setdefault((metric["name"], labels.get("rank")), []).append(metric["step"])
    return {key: sorted(steps) for key, steps in found.items()}


def custom_info(resource: dict[str, Any]) -> dict[str, Any]:
    """customInfo name → value, JSON-decoded."""
    return {item["name"]: json.loads(item["value"]) for item in resource["customInfo"]}
