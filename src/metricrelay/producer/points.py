"""Checks made at the producer's call site, in microseconds, with the worker's own rules.

A bad point raises :class:`PointError` (a ``ValueError``) where the user can see it, instead of
becoming a dead letter minutes later. Names and label sets already seen are remembered, so the
common case — the same few metric names every step — costs a set lookup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from metricrelay import timestamps
from metricrelay.models import MAX_LABELS, MAX_NAME_CHARS, MAX_STEP, METRIC_NAME_PATTERN

__all__ = [
    "Labels",
    "PointError",
    "check_labels",
    "check_metric_name",
    "check_name",
    "check_step",
    "check_value",
    "format_ns",
    "stamp",
]

Labels = tuple[tuple[str, str], ...]

_NAME_CHAR: Final = re.compile(METRIC_NAME_PATTERN)
_CACHE_LIMIT: Final = 4096  # distinct names/label sets remembered; a run has few


class PointError(ValueError):
    """A metric, tag or customInfo the API would refuse."""


_good_names: set[str] = set()
_good_labels: dict[Any, Labels] = {}


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise PointError(f"{what} must be a string of 1-{MAX_NAME_CHARS} characters: {name!r}")
    return name


def check_metric_name(name: object) -> str:
    if name in _good_names:
        return name
    check_name(name, "metric name")
    assert isinstance(name, str)
    if _NAME_CHAR.search(name) is None:
        raise PointError(f"metric name must contain a letter, digit, '_' or '-': {name!r}")
    if len(_good_names) < _CACHE_LIMIT:
        _good_names.add(name)
    return name


def check_value(value: object) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
    elif kind is int:
        return float(value)  # type: ignore[arg-type]
    elif kind is not bool and hasattr(value, "__float__"):  # numpy and torch scalars
        number = float(value)
        if math.isfinite(number):
            return number
    else:
        raise PointError(f"metric value must be a number, not {kind.__name__}: {value!r}")
    raise PointError(f"metric value must be finite (NaN and ±Infinity cannot be sent): {value!r}")


def check_step(step: object) -> int | None:
    if step is None:
        return None
    if type(step) is not int and not (hasattr(step, "__index__") and type(step) is not bool):
        raise PointError(f"step must be an integer, not {type(step).__name__}: {step!r}")
    number = step.__index__()
    if not 0 <= number <= MAX_STEP:
        raise PointError(f"step must be between 0 and {MAX_STEP}: {step!r}")
    return int(number)


def check_labels(labels: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels | None:
    """Labels as a dict or as pairs; at most 20, names and values of 1-256 characters."""
    if not labels:
        return None
    pairs = tuple(labels.items()) if isinstance(labels, Mapping) else tuple(labels)
    known = _good_labels.get(pairs)
    if known is not None:
        return known
    if len(pairs) > MAX_LABELS:
        raise PointError(f"a metric may have at most {MAX_LABELS} labels, not {len(pairs)}")
    checked = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise PointError(f"a label must be a (name, value) pair: {pair!r}")
        checked.append((check_name(pair[0], "label name"), check_name(pair[1], "label value")))
    result = tuple(checked)
    if len(_good_labels) < _CACHE_LIMIT:
        _good_labels[pairs] = result
    return result


def stamp(timestamp: object) -> str:
    """A user-given timestamp (aware datetime or RFC 3339 text) in the canonical UTC form."""
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise PointError("timestamp must be timezone-aware (a naive time would be guessed)")
        return timestamps.format_utc(timestamp)
    if isinstance(timestamp, str):
        try:
            return timestamps.normalize(timestamp)
        except timestamps.TimestampError as exc:
            raise PointError(f"timestamp {exc}: {timestamp!r}") from None
    raise PointError(f"timestamp must be a datetime or an RFC 3339 string: {timestamp!r}")


class _SecondCache:
    """Formats nanosecond times; the date-and-second part is computed once per second."""

    second = -1
    prefix = ""


def format_ns(ns: int) -> str:
    """``time.time_ns()`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (microseconds, truncated)."""
    second, rest = divmod(ns, 1_000_000_000)
    if second != _SecondCache.second:
        moment = datetime.fromtimestamp(second, UTC).replace(tzinfo=None)
        _SecondCache.prefix = moment.isoformat(timespec="seconds")
        _SecondCache.second = second
    return f"{_SecondCache.prefix}.{rest // 1000:06d}Z"
