"""PATCH bodies: read within a byte budget, validate once, hold the count limits (413) apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import pydantic_core
from aiohttp import web
from pydantic import ValidationError

from metricrelay.aiapi.errors import ApiError, bad_request, payload_too_large
from metricrelay.codec import RESOURCE_ADAPTER, describe_error, format_path
from metricrelay.models import (
    MAX_CUSTOM_INFO,
    MAX_CUSTOM_INFO_BYTES,
    MAX_LABELS,
    MAX_METRICS,
    MAX_TAGS,
    MetricResource,
)

__all__ = [
    "check_content_type",
    "count_limit_breach",
    "name_value",
    "oversized_item",
    "parse_resource",
    "read_body",
]

JSON_TYPES: Final = frozenset({"application/json", "application/merge-patch+json"})
_SECTION_LIMITS: Final = (
    ("metrics", MAX_METRICS),
    ("tags", MAX_TAGS),
    ("customInfo", MAX_CUSTOM_INFO),
)
_CHUNK: Final = 64 * 1024


def check_content_type(request: web.Request) -> None:
    """JSON and JSON merge patch (SAP's SDK sends the former); a missing type is read as JSON."""
    if "Content-Type" in request.headers and request.content_type not in JSON_TYPES:
        raise ApiError(
            415,
            f"Content-Type {request.content_type!r} is not supported; "
            "send application/merge-patch+json or application/json",
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length is judged before a byte is read; a chunked body is read in
    chunks and refused at the first chunk past the limit, so at most ``limit`` plus one chunk
    is ever held.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(f"body of {declared} bytes", limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large(f"body of more than {limit} bytes", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, limit: int) -> ApiError:
    return payload_too_large(f"{what} exceeds the limit of {limit} bytes", close=True)


def parse_resource(raw: bytes) -> MetricResource:
    """Validate a PATCH body: 413 for a broken count limit (it wins), 400 naming each bad item."""
    try:
        resource = RESOURCE_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        breach = _labels_breach(errors) or count_limit_breach(_lenient_sections(raw))
        if breach:
            raise payload_too_large(breach) from None
        raise _invalid(errors) from None
    breach = count_limit_breach(resource)
    if breach:
        raise payload_too_large(breach)
    return resource


def count_limit_breach(resource: Any) -> str | None:
    """Which count limit of a whole resource is broken, if any (items and customInfo bytes)."""
    for section, limit in _SECTION_LIMITS:
        items = resource.get(section)
        if isinstance(items, list) and len(items) > limit:
            return f"{section}: {len(items)} items, at most {limit} per request"
    infos = resource.get("customInfo")
    if isinstance(infos, list) and infos:
        size = sum(len(orjson.dumps(name_value(info))) for info in infos)
        if size > MAX_CUSTOM_INFO_BYTES:
            return f"customInfo: {size} bytes encoded, at most {MAX_CUSTOM_INFO_BYTES}"
    return None


def oversized_item(resource: Any) -> str | None:
    """Why one customInfo item of ``resource`` can never be sent, if one cannot: over the 5 MB
    of customInfo a resource may have, measured as the worker measures it. (Count limits are
    no such reason: the worker splits a resource over them into several PATCHes.)"""
    for info in resource.get("customInfo") or ():
        size = len(orjson.dumps(name_value(info)))
        if size > MAX_CUSTOM_INFO_BYTES:
            name = info.get("name") if isinstance(info, dict) else None
            return (
                f"customInfo {name!r}: {size} bytes encoded, at most {MAX_CUSTOM_INFO_BYTES} "
                "for all customInfo of a resource"
            )
    return None


def name_value(info: Any) -> Any:
    """The encoded form the worker measures customInfo by: ``{"name", "value"}`` only."""
    if isinstance(info, dict):
        return {"name": info.get("name"), "value": info.get("value")}
    return info


def _lenient_sections(raw: bytes) -> dict[str, Any]:
    """The body as plain JSON, to count sections of an otherwise invalid body."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def _labels_breach(errors: Sequence[pydantic_core.ErrorDetails]) -> str | None:
    for error in errors:
        loc = error["loc"]
        if error["type"] == "too_long" and loc[0::2] == ("metrics", "labels") and len(loc) == 3:
            return f"{format_path(loc)}: more than {MAX_LABELS} labels"
    return None


def _invalid(errors: Sequence[pydantic_core.ErrorDetails]) -> ApiError:
    described = [_describe(error) for error in errors]
    shown = "; ".join(described[:5])
    more = f" (and {len(described) - 5} more)" if len(described) > 5 else ""
    return bad_request(f"Invalid MetricResource: {shown}{more}", details=described)


def _describe(error: pydantic_core.ErrorDetails) -> str:
    text = describe_error(error)
    if not error["loc"]:  # the codec speaks of stream entries; here it is the request body
        text = "body" + text.removeprefix("entry")
    return text
