"""Checks made at the producer's call site, in microseconds, with the worker's own rules.

A bad point raises :class:`PointError` (a ``ValueError``) where the user can see it, instead of
becoming a dead letter minutes later. Names, sets of names and label sets already found good are
remembered (bounded), so the common case — the same few names and labels every step — costs a
dict lookup; values are checked for a whole call at once when they are plain finite floats.
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
    "CACHE_LIMIT",
    "Labels",
    "PointError",
    "check_labels",
    "check_metric_name",
    "check_metric_names",
    "check_name",
    "check_step",
    "check_text",
    "check_value",
    "check_values",
    "format_ns",
    "stamp",
]

Labels = tuple[tuple[str, str], ...]

_NAME_CHAR: Final = re.compile(METRIC_NAME_PATTERN)
CACHE_LIMIT: Final = 4096  # entries per cache of good names/label sets; a run has few
_FLOATS_ONLY: Final = frozenset({float})


class PointError(ValueError):
    """A metric, tag or customInfo the API would refuse."""


# What was found good, by the exact key given. Only good inputs are remembered, so an invalid
# one is always checked in full; each cache is emptied when it reaches CACHE_LIMIT (a run that
# makes up label values per step gains nothing from it, and it cannot grow without bound).
_good_names: set[str] = set()
_good_name_sets: set[tuple[str, ...]] = set()
_good_labels: set[Labels] = set()


def _remember(cache: set[Any], key: Any) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache.add(key)


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise PointError(f"{what} must be a string of 1-{MAX_NAME_CHARS} characters: {name!r}")
    check_text(name, what)
    return name


def check_text(text: str, what: str) -> None:
    """UTF-8 can carry it: a lone surrogate (bytes that were not UTF-8, decoded by os.fsdecode
    or sys.argv) cannot be sent, and found only when the writer encodes it, it stopped the
    writer thread with every point after it."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            message = f"{what} is not valid Unicode text (a lone surrogate): {text!r}"
            raise PointError(message) from None


def check_metric_name(name: object) -> str:
    if type(name) is str and name in _good_names:
        return name
    check_name(name, "metric name")
    assert isinstance(name, str)
    if _NAME_CHAR.search(name) is None:
        raise PointError(f"metric name must contain a letter, digit, '_' or '-': {name!r}")
    _remember(_good_names, name)
    return name


def check_metric_names(names: tuple[Any, ...]) -> tuple[str, ...]:
    """The names of one ``log_metrics`` call, in order; the tuple is remembered when good."""
    if names in _good_name_sets:  # only str equals str: no other input can hit
        return names
    for name in names:
        check_metric_name(name)
    _remember(_good_name_sets, names)
    return names


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


def check_values(values: tuple[Any, ...]) -> tuple[float, ...]:
    """The values of one call as floats. Plain floats whose sum is finite are all finite (a sum
    with a NaN or an infinity is not), checked in C; anything else goes value by value."""
    if set(map(type, values)) == _FLOATS_ONLY and math.isfinite(sum(values)):
        return values
    return tuple(map(check_value, values))


def check_step(step: object) -> int | None:
    if type(step) is int and 0 <= step <= MAX_STEP:
        return step
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
    if type(labels) is dict or isinstance(labels, Mapping):  # the exact type first: fast
        pairs = tuple(labels.items())
    else:
        pairs = tuple(labels)
    try:
        if pairs in _good_labels:
            return pairs  # equal to checked str pairs
    except TypeError:  # pairs given as lists: checked below, not remembered
        pass
    if len(pairs) > MAX_LABELS:
        raise PointError(f"a metric may have at most {MAX_LABELS} labels, not {len(pairs)}")
    checked = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise PointError(f"a label must be a (name, value) pair: {pair!r}")
        checked.append((check_name(pair[0], "label name"), check_name(pair[1], "label value")))
    result = tuple(checked)
    _remember(_good_labels, result)
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
