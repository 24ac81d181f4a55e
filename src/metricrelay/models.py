"""Wire models of the AI API metrics contract and of metricrelay's stream fragment.

The models are TypedDicts validated by pydantic: validation happens once, on raw bytes, and what
comes out is plain dicts that ``orjson`` encodes without a model layer in between. Count limits of
a whole resource (1000 metrics, 100 tags, 100 customInfo, 5 MB customInfo) are *not* part of the
types: the worker splits a fragment that exceeds them and the API answers them with 413, not 400.
The per-item limit of 20 labels is, since no split can mend it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, NotRequired

from pydantic import AfterValidator, AllowInfNan, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from metricrelay import timestamps

__all__ = [
    "MAX_CUSTOM_INFO",
    "MAX_CUSTOM_INFO_BYTES",
    "MAX_LABELS",
    "MAX_METRICS",
    "MAX_NAME_CHARS",
    "MAX_STEP",
    "MAX_TAGS",
    "CustomInfo",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "Fragment",
    "Label",
    "Metric",
    "MetricResource",
    "Tag",
    "error_body",
]

MAX_METRICS: Final = 1000
MAX_TAGS: Final = 100
MAX_CUSTOM_INFO: Final = 100
MAX_LABELS: Final = 20
MAX_NAME_CHARS: Final = 256
# "5 MB" read as 5 * 10**6 bytes of encoded customInfo: the stricter of the readings, so a
# body we build never draws the 413 a looser reading could.
MAX_CUSTOM_INFO_BYTES: Final = 5_000_000
MAX_STEP: Final = 2**63 - 1  # the API stores steps as 64-bit integers

# `\w` is spelled out in ASCII: JSON Schema (and SAP's Java backend) read it that way, whereas
# Python's and Rust's regex engines would also admit every Unicode letter.
EXECUTION_ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{4,64}$"
# The spec's `[\w-]{1,64}` is not anchored and JSON Schema patterns search: at least one such char.
METRIC_NAME_PATTERN: Final = r"[A-Za-z0-9_-]"
# A resource group travels as an HTTP header value: visible ASCII only.
RESOURCE_GROUP_PATTERN: Final = r"^[\x21-\x7e]{1,253}$"


def _timestamp(value: str) -> str:
    try:
        return timestamps.normalize(value)
    except timestamps.TimestampError as exc:
        raise PydanticCustomError("timestamp", "timestamp {reason}", {"reason": str(exc)}) from None


def _none_is_empty(value: Any) -> Any:
    return [] if value is None else value


Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_NAME_CHARS)]
MetricName = Annotated[
    str,
    StringConstraints(
        strict=True, min_length=1, max_length=MAX_NAME_CHARS, pattern=METRIC_NAME_PATTERN
    ),
]
ExecutionId = Annotated[str, StringConstraints(strict=True, pattern=EXECUTION_ID_PATTERN)]
ResourceGroup = Annotated[str, StringConstraints(strict=True, pattern=RESOURCE_GROUP_PATTERN)]
# strict: a bool or a numeric string is not a number; a JSON integer is.
FiniteNumber = Annotated[float, Field(strict=True), AllowInfNan(False)]
Step = Annotated[int, Field(strict=True, ge=0, le=MAX_STEP)]
Timestamp = Annotated[str, Field(strict=True), AfterValidator(_timestamp)]


class Label(TypedDict):
    name: Name
    value: Name


class Tag(TypedDict):
    name: Name
    value: Name


class CustomInfo(TypedDict):
    name: Name
    value: Annotated[str, StringConstraints(strict=True, min_length=1)]


class Metric(TypedDict):
    name: MetricName
    value: FiniteNumber
    timestamp: NotRequired[Timestamp | None]
    step: NotRequired[Step | None]
    labels: NotRequired[Annotated[list[Label], Field(max_length=MAX_LABELS)] | None]


class MetricResource(TypedDict):
    """A PATCH body. A missing or null section is read as empty."""

    executionId: ExecutionId
    metrics: NotRequired[Annotated[list[Metric], BeforeValidator(_none_is_empty)]]
    tags: NotRequired[Annotated[list[Tag], BeforeValidator(_none_is_empty)]]
    customInfo: NotRequired[Annotated[list[CustomInfo], BeforeValidator(_none_is_empty)]]


class Fragment(MetricResource):
    """One event-stream entry (CONTRACT.md §2.1): a MetricResource plus its resource group."""

    resourceGroup: NotRequired[ResourceGroup | None]


class ErrorDetail(TypedDict):
    code: str
    message: str


class ErrorInfo(TypedDict):
    code: str
    message: str
    requestId: str
    target: str
    details: list[ErrorDetail]


class ErrorBody(TypedDict):
    """The only error shape SAP's SDK parses without crashing."""

    error: ErrorInfo


def error_body(code: str, message: str, *, request_id: str, target: str = "/metrics") -> ErrorBody:
    """Build an AI API error body; the detail repeats code and message as the API does."""
    return {
        "error": {
            "code": code,
            "message": message,
            "requestId": request_id,
            "target": target,
            "details": [{"code": code, "message": message}],
        }
    }
