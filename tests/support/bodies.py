"""Builders of the AI API's PATCH bodies: a metric item and a MetricResource document."""

from __future__ import annotations

from typing import Any

__all__ = ["metric", "resource"]


def metric(step: int = 0, name: str = "loss", **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "value": 1.0 / (step + 1), "step": step}
    item["timestamp"] = f"2026-11-23T12:00:{step % 60:02d}.000000Z"
    item.update(fields)
    return item


def resource(execution_id: str = "exec-0001", **sections: Any) -> dict[str, Any]:
    return {"executionId": execution_id, **sections}
