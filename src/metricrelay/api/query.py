"""Query strings of GET and DELETE /metrics: executionIds, $filter, $select, tagFilters, paging."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from metricrelay.aiapi.errors import ApiError, bad_request
from metricrelay.codec import SECTIONS, Section
from metricrelay.models import EXECUTION_ID_PATTERN

__all__ = [
    "MAX_EXECUTION_IDS",
    "MetricQuery",
    "TagFilter",
    "parse_delete",
    "parse_query",
    "parse_tag_filters",
]

MAX_EXECUTION_IDS: Final = 10
MAX_TAG_FILTER_CHARS: Final = 5000
MAX_TAG_FILTERS: Final = 100
DEFAULT_TOP: Final = 1000
MAX_TOP: Final = 10_000

_EXECUTION_ID = re.compile(EXECUTION_ID_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,19}")
_QUOTED = r"'([^']*)'"
_FILTER_EQ = re.compile(rf"\s*executionId\s+eq\s+{_QUOTED}\s*", re.IGNORECASE)
_FILTER_IN = re.compile(
    rf"\s*executionId\s+in\s+\(\s*({_QUOTED}(?:\s*,\s*{_QUOTED})*)\s*\)\s*", re.IGNORECASE
)
# Well-formed OData (field, operator, operand) with another field or operator: 501. A
# supported field and operator with a malformed operand stays a 400.
_FILTER_ODATA = re.compile(r"\s*\w+\s+[a-z]+\s+\S.*", re.IGNORECASE)
_FILTER_SUPPORTED = re.compile(r"\s*executionId\s+(eq|in)\s", re.IGNORECASE)

TagOp = Literal["eq", "ne", "exists"]


@dataclass(frozen=True, slots=True)
class TagFilter:
    """``name=value`` (eq), ``name!=value`` (ne: no such tag with that value), ``name``."""

    name: str
    op: TagOp
    value: str | None = None


@dataclass(frozen=True, slots=True)
class MetricQuery:
    execution_ids: tuple[str, ...] | None
    tag_filters: tuple[TagFilter, ...]
    sections: frozenset[Section]
    top: int = DEFAULT_TOP
    skip: int = 0


def _check_ids(ids: list[str], source: str) -> tuple[str, ...]:
    if not ids:
        raise bad_request(f"{source}: at least one execution id is required")
    if len(ids) > MAX_EXECUTION_IDS:
        raise bad_request(f"{source}: at most {MAX_EXECUTION_IDS} execution ids, got {len(ids)}")
    for value in ids:
        if not _EXECUTION_ID.fullmatch(value):
            raise bad_request(
                f"{source}: {value!r} is not an execution id "
                "(4-64 characters, each a letter, digit, '_', '.' or '-')"
            )
    return tuple(dict.fromkeys(ids))


def parse_filter(text: str) -> tuple[str, ...]:
    """The deprecated ``$filter``: ``executionId eq 'x'`` or ``executionId in ('x','y')``."""
    if match := _FILTER_EQ.fullmatch(text):
        return _check_ids([match.group(1)], "$filter")
    if match := _FILTER_IN.fullmatch(text):
        return _check_ids(re.findall(_QUOTED, match.group(1)), "$filter")
    if _FILTER_ODATA.fullmatch(text) and not _FILTER_SUPPORTED.match(text):
        raise ApiError(
            501,
            "$filter: only \"executionId eq 'x'\" and \"executionId in ('x','y')\" are implemented",
        )
    raise bad_request(f"$filter: cannot parse {text!r}")


def parse_tag_filters(text: str) -> tuple[TagFilter, ...]:
    """Comma-joined expressions, ANDed; names and values may be percent-encoded (``%2C``)."""
    if len(text) > MAX_TAG_FILTER_CHARS:
        raise bad_request(f"tagFilters: at most {MAX_TAG_FILTER_CHARS} characters")
    expressions = text.split(",")
    if len(expressions) > MAX_TAG_FILTERS:
        raise bad_request(f"tagFilters: at most {MAX_TAG_FILTERS} expressions")
    out = []
    for number, expression in enumerate(expressions):
        if "!=" in expression:
            name, value = expression.split("!=", 1)
            tag = TagFilter(unquote(name), "ne", unquote(value))
        elif "=" in expression:
            name, value = expression.split("=", 1)
            tag = TagFilter(unquote(name), "eq", unquote(value))
        else:
            tag = TagFilter(unquote(expression), "exists")
        if not tag.name or (tag.op != "exists" and not tag.value):
            raise bad_request(
                f"tagFilters[{number}]: {expression!r} must be name=value, name!=value or name"
            )
        out.append(tag)
    return tuple(out)


def parse_select(text: str | None) -> frozenset[Section]:
    if text is None:
        return frozenset(SECTIONS)
    chosen: set[Section] = set()
    for part in (p.strip() for p in text.split(",")):
        if part == "*":
            chosen.update(SECTIONS)
        elif part in SECTIONS:
            chosen.add(part)
        else:
            raise bad_request(f"$select: {part!r} is not one of metrics, tags, customInfo, *")
    return frozenset(chosen)


def _integer(params: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise bad_request(f"{name}: must be an integer from 0 to {maximum}, got {text!r}")
    return int(text)


def parse_query(params: Mapping[str, str]) -> MetricQuery:
    """The GET query; one of executionIds, $filter and tagFilters is required."""
    ids: tuple[str, ...] | None = None
    if (joined := params.get("executionIds")) is not None:
        ids = _check_ids([part for part in joined.split(",") if part], "executionIds")
    if (odata := params.get("$filter")) is not None:
        from_filter = parse_filter(odata)
        ids = from_filter if ids is None else tuple(i for i in ids if i in from_filter)
    tags: tuple[TagFilter, ...] = ()
    if (tag_text := params.get("tagFilters")) is not None:
        tags = parse_tag_filters(tag_text)
    if ids is None and not tags:
        raise bad_request(
            "one of the query parameters executionIds, $filter, tagFilters is required"
        )
    return MetricQuery(
        execution_ids=ids,
        tag_filters=tags,
        sections=parse_select(params.get("$select")),
        top=_integer(params, "$top", DEFAULT_TOP, MAX_TOP),
        skip=_integer(params, "$skip", 0, 2**62),
    )


def parse_delete(params: Mapping[str, str]) -> str:
    """DELETE takes exactly one ``executionId`` (singular)."""
    value = params.get("executionId")
    if value is None:
        raise bad_request("executionId: the query parameter is required")
    return _check_ids([value], "executionId")[0]
