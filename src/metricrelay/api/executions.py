"""``GET /v2/lm/executions`` (and ``/$count``): AI Core's executions list, built from the store.

The reference server knows metric resources, not workflows: an execution exists here once
metrics were PATCHed for it, and its lifecycle is inferred from its writes — ``RUNNING`` while
a PATCH arrived within :data:`IDLE_S`, ``COMPLETED`` after that. Scenario, configuration and
executable are fixed placeholders, so that clients reading AI Core's shape (SAP's SDK, the
``metricrelay view`` page) find every field they expect. Newest first, as AI Core lists them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from metricrelay.aiapi.errors import bad_request
from metricrelay.api.handlers import RESOURCE_GROUP_HEADER, STATE
from metricrelay.models import RESOURCE_GROUP_PATTERN

__all__ = ["IDLE_S", "STATUSES", "get_executions"]

IDLE_S: Final = 300.0
# AI Core's execution statuses; only RUNNING and COMPLETED occur here, the others filter to none
STATUSES: Final = ("PENDING", "RUNNING", "COMPLETED", "DEAD", "STOPPING", "STOPPED", "UNKNOWN")
DEFAULT_TOP: Final = 10_000
MAX_TOP: Final = 10_000
PLACEHOLDERS: Final = {
    "scenarioId": "metricrelay",
    "executableId": "metricrelay",
    "configurationId": "metricrelay-metrics",
    "configurationName": "metrics only (reference server)",
}
# filters AI Core takes on this list; here each matches all executions or none
_EQUALS: Final = {
    "scenarioId": "scenarioId",
    "configurationId": "configurationId",
    "executableIds": "executableId",
}
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
_GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)


def _integer(params: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    # SAP's Python SDK sends top/skip without the "$" of the spec: both are taken, "$" first
    text = params.get(f"${name}", params.get(name))
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise bad_request(f"${name}: must be an integer from 0 to {maximum}, got {text!r}")
    return int(text)


def _status_filter(params: Mapping[str, str]) -> str | None:
    status = params.get("status")
    if status is not None and status not in STATUSES:
        raise bad_request(f"status: must be one of {', '.join(STATUSES)}, got {status!r}")
    return status


def execution(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One index row of the store (``MetricStore.executions``) in AI Core's execution shape."""
    modified = datetime.fromisoformat(row["modifiedAt"])
    running = now - modified < timedelta(seconds=IDLE_S)
    out: dict[str, Any] = {"id": row["executionId"], **PLACEHOLDERS}
    out["status"] = "RUNNING" if running else "COMPLETED"
    out["targetStatus"] = "COMPLETED"
    out["createdAt"] = row["createdAt"]
    out["modifiedAt"] = row["modifiedAt"]
    out["submissionTime"] = out["startTime"] = row["createdAt"]
    if not running:
        out["completionTime"] = row["modifiedAt"]
    return out


def _matches(item: Mapping[str, Any], params: Mapping[str, str], status: str | None) -> bool:
    if status is not None and item["status"] != status:
        return False
    for param, field in _EQUALS.items():
        wanted = params.get(param)
        if wanted is not None and item[field] not in wanted.split(","):
            return False
    return True


async def get_executions(request: web.Request) -> web.Response:
    """``{"count": total, "resources": [page]}``; ``…/$count`` answers the bare total."""
    state = request.app[STATE]
    state.tokens.check(request.headers.get("Authorization"))
    group = request.headers.get(RESOURCE_GROUP_HEADER)
    if not group or not _GROUP.fullmatch(group):
        raise bad_request(f"{RESOURCE_GROUP_HEADER}: a header of 1-253 visible ASCII characters")
    params = request.query
    status = _status_filter(params)
    top = _integer(params, "top", DEFAULT_TOP, MAX_TOP)
    skip = _integer(params, "skip", 0, 2**62)
    now = state.wall_clock()
    rows = await state.store.executions(group)
    items = [execution(row, now) for row in rows]
    items = [item for item in items if _matches(item, params, status)]
    items.sort(key=lambda item: (item["createdAt"], item["id"]), reverse=True)
    if request.match_info.get("count"):
        body = orjson.dumps(len(items))
    else:
        body = orjson.dumps({"count": len(items), "resources": items[skip : skip + top]})
    return web.Response(body=body, content_type="application/json")
