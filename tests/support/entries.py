"""Stream entries for the fast-path tests: one valid metric, changed field by field."""

from __future__ import annotations

from typing import Any

import orjson

STAMP = "2026-12-01T12:00:00.123456Z"


def metric(**changes: Any) -> dict[str, Any]:
    """A valid point; a field given as ``...`` is left out."""
    item: dict[str, Any] = {"name": "loss", "value": 0.5, "timestamp": STAMP, "step": 3}
    item["labels"] = [{"name": "rank", "value": "0"}]
    item.update(changes)
    return {key: value for key, value in item.items() if value is not ...}


def entry(*metrics: dict[str, Any], **top: Any) -> bytes:
    return orjson.dumps({"executionId": "exec-1", "metrics": list(metrics), **top})
