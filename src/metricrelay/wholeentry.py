"""The whole-entry fast path: a stream entry that is valid as written travels as its own bytes.

Most entries need nothing from the worker but a check: every item valid, every timestamp already
in the canonical UTC form, no null or empty section to drop, no field the API does not know. For
those, one native pass (msgspec Structs carrying the API's constraints) validates the entry, and
the bytes of its ``metrics`` array go into a PATCH body as they are — one *run* instead of an
encoded item per point. Anything else (an invalid item, an offset timestamp, a missing one, a
``null``, an unknown field, whitespace around a timestamp) makes :func:`read` decline with
``None``, and the entry takes the pydantic path in codec.py, which rewrites or reports it with the
messages producers know. So this module never judges an entry: it only recognises the ones that
need no judgement, and ``tests/test_wholeentry.py`` holds it to giving what codec.py would give.

The commonest entries — metrics only, plain ASCII text — are recognised first by ``_entryscan``,
a C pass over the bytes that builds no Python object per point (``_entryscan.c`` says what it
takes; it declines the rest to the msgspec pass). Built at install (hatch_build.py); where no C
compiler was there, the msgspec pass does it all, with the same results, more slowly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Final

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from metricrelay.models import (
    MAX_CUSTOM_INFO_BYTES,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_STEP,
    METRIC_NAME_PATTERN,
)

__all__ = [
    "NATIVE",
    "SCAN",
    "WholeEntry",
    "items_of",
    "point_count",
    "read",
    "read_checked",
]

_Scan = Callable[[bytes], tuple[str | None, str, bytes, int] | None]
try:
    from metricrelay._entryscan import scan as _native_scan

    _scan: _Scan | None = _native_scan
except ImportError:  # installed without a C compiler
    _scan = None
NATIVE: Final = _scan is not None
# The C recogniser itself, for the worker's intake loop (None without it): (resourceGroup or None,
# executionId, the run, its point count) of a plain entry, None for anything it leaves to
# read_checked.
SCAN: Final = _scan

# The patterns of models.py with ``\Z`` for ``$``: Python's ``$`` also matches before a final
# newline, pydantic's (Rust) one does not.
_EXECUTION_ID: Final = r"^[A-Za-z0-9_.-]{4,64}\Z"
_RESOURCE_GROUP: Final = r"^[\x21-\x7e]{1,253}\Z"
_LARGEST: Final = 1.7976931348623157e308  # beyond it a float is infinite: the API refuses it

_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
_Finite = Annotated[float, Meta(ge=-_LARGEST, le=_LARGEST)]
_Aware = Annotated[datetime, Meta(tz=True)]  # a real instant with an offset
_Step = Annotated[int, Meta(ge=0, le=MAX_STEP)]


class _Label(Struct, forbid_unknown_fields=True):
    name: _Name
    value: _Name


class _Metric(Struct, forbid_unknown_fields=True):
    name: _Name  # the name pattern is checked per distinct name, see _names_ok
    value: _Finite
    timestamp: _Aware
    step: _Step | UnsetType = UNSET
    labels: Annotated[list[_Label], Meta(min_length=1, max_length=MAX_LABELS)] | UnsetType = UNSET


class _Tag(Struct, forbid_unknown_fields=True):
    name: _Name
    value: _Name


class _Info(Struct, forbid_unknown_fields=True):
    name: _Name
    value: Annotated[str, Meta(min_length=1)]


class _Fragment(Struct, forbid_unknown_fields=True):
    executionId: Annotated[str, Meta(pattern=_EXECUTION_ID)]  # noqa: N815 (the wire's name)
    resourceGroup: Annotated[str, Meta(pattern=_RESOURCE_GROUP)] | UnsetType = UNSET  # noqa: N815
    metrics: list[_Metric] | UnsetType = UNSET
    tags: list[_Tag] | UnsetType = UNSET
    customInfo: list[_Info] | UnsetType = UNSET  # noqa: N815


class _Run(Struct):
    """The raw metrics of an entry known to be valid."""

    metrics: Raw = Raw(b"[]")


class _Parts(Struct):
    """The same entry cut into raw parts, once it is known to be valid."""

    metrics: Raw = Raw(b"[]")
    tags: list[Raw] = []  # msgspec copies mutable defaults
    customInfo: list[Raw] = []  # noqa: N815


_CHECK: Final = msgspec.json.Decoder(_Fragment)
_ITEMS: Final = msgspec.json.Decoder(list[Raw])
_CUT: Final = msgspec.json.Decoder(_Parts)
_RUN: Final = msgspec.json.Decoder(_Run)
# A timestamp key NOT followed by a value exactly as codec.py would write it: one scan, no match.
_NOT_CANONICAL: Final = re.compile(rb'"timestamp":(?!"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")')
_TIMESTAMP_KEY: Final = b'"timestamp":'
_METRIC_NAME: Final = re.compile(METRIC_NAME_PATTERN)
_KNOWN_NAMES_AT_MOST: Final = 4096
_known_names: set[str] = set()  # metric names that passed the pattern (names repeat)


# (resourceGroup or None for the worker's default, executionId, the metrics' run — the items
# between the array's brackets, as written —, its number of points, tags, customInfo)
WholeEntry = tuple[str | None, str, bytes, int, list[tuple[str, bytes]], list[tuple[str, bytes]]]


def read(raw: bytes) -> WholeEntry | None:
    """The entry as it can travel unchanged, or None when it needs codec.py's judgement."""
    if _scan is not None and (plain := _scan(raw)) is not None:
        return plain[0], plain[1], plain[2], plain[3], [], []
    return read_checked(raw)


def read_checked(raw: bytes) -> WholeEntry | None:
    """:func:`read` by the msgspec pass alone (entries with tags or customInfo, any text)."""
    try:
        checked = _CHECK.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    metrics = checked.metrics
    if metrics is UNSET:
        metrics = []
    elif not metrics:
        return None  # an empty section is left out of what the worker sends
    elif not (_names_ok(metrics) and _timestamps_canonical(raw, len(metrics))):
        return None
    tags: list[_Tag] = checked.tags or []
    infos: list[_Info] = checked.customInfo or []
    if checked.tags is UNSET and checked.customInfo is UNSET:  # most entries: metrics alone
        raw_metrics, raw_tags, raw_infos = _RUN.decode(raw).metrics, [], []
    else:
        if checked.tags == [] or checked.customInfo == []:  # left out, as above
            return None
        parts = _CUT.decode(raw)
        raw_metrics, raw_tags, raw_infos = parts.metrics, parts.tags, parts.customInfo
        if any(len(item) > MAX_CUSTOM_INFO_BYTES for item in raw_infos):
            # measured as written (spacing, \u escapes) it may break the limit that the item,
            # encoded compactly as codec.py and every producer measure it, keeps: codec judges
            return None
    return (
        checked.resourceGroup or None,
        checked.executionId,
        bytes(raw_metrics).strip()[1:-1] if metrics else b"",  # the items between the brackets
        len(metrics),
        [(tag.name, bytes(item)) for tag, item in zip(tags, raw_tags, strict=True)],
        [(info.name, bytes(item)) for info, item in zip(infos, raw_infos, strict=True)],
    )


def _names_ok(metrics: list[_Metric]) -> bool:
    if len(metrics) == 1 and metrics[0].name in _known_names:
        return True  # a one-point entry (W2) with a name seen before
    names = {metric.name for metric in metrics}
    if names <= _known_names:
        return True
    for name in names - _known_names:
        if _METRIC_NAME.search(name) is None:
            return False
        if len(_known_names) >= _KNOWN_NAMES_AT_MOST:
            _known_names.clear()  # a producer minting names per step: keep the set small
        _known_names.add(name)
    return True


def _timestamps_canonical(raw: bytes, metrics: int) -> bool:
    """Every metric's timestamp already canonical, each metric with exactly one.

    Unknown fields were refused, so a ``"timestamp":`` key can only be a metric's (inside a JSON
    string its quotes would be escaped); a metric writing the key twice shows as one too many.
    """
    return raw.count(_TIMESTAMP_KEY) == metrics and _NOT_CANONICAL.search(raw) is None


def items_of(run: bytes) -> list[bytes]:
    """A run's items one by one (an item alone gives itself)."""
    if run[:1] == b"{" and run.count(b"{") == 1:
        return [run]  # a point without labels, or a single item: nothing to cut
    return [bytes(item) for item in _ITEMS.decode(b"[" + run + b"]")]


def point_count(run: bytes) -> int:
    """How many points a run (or a single metric item) holds: every metric item the worker
    sends carries exactly one timestamp key (codec.py writes one into each, :func:`read` takes
    only entries whose every metric has exactly one), and no other part of an item can hold
    that byte sequence unescaped."""
    return run.count(_TIMESTAMP_KEY)
