"""RFC 3339 parsing and the canonical UTC form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricrelay.timestamps import TimestampError, format_utc, from_epoch_ms, normalize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T12:00:00.123456Z", "2026-11-23T12:00:00.123456Z"),
        ("2026-11-23T12:00:00Z", "2026-11-23T12:00:00.000000Z"),
        ("2026-11-23T12:00:00.1Z", "2026-11-23T12:00:00.100000Z"),
        ("2026-11-23T14:00:00+02:00", "2026-11-23T12:00:00.000000Z"),
        ("2026-11-23T14:00:00.5+02:00", "2026-11-23T12:00:00.500000Z"),
        ("2026-11-23T01:30:00-05:30", "2026-11-23T07:00:00.000000Z"),
        ("2026-11-23T00:30:00+01:00", "2026-11-22T23:30:00.000000Z"),  # crosses midnight
        ("2026-11-23T12:00:00.123456789Z", "2026-11-23T12:00:00.123456Z"),  # nanoseconds
        ("2026-11-23T12:00:00.123456789+02:00", "2026-11-23T10:00:00.123456Z"),
        ("2026-11-23t12:00:00z", "2026-11-23T12:00:00.000000Z"),
        ("2026-11-23 12:00:00Z", "2026-11-23T12:00:00.000000Z"),
        ("2024-02-29T23:59:59.999999-00:00", "2024-02-29T23:59:59.999999Z"),
    ],
)
def test_normalize_gives_canonical_utc(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T12:00:00",  # naive: no offset
        "2026-11-23",
        "12:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-02-30T00:00:00.000000Z",  # canonical shape, impossible date
        "2026-11-23T25:00:00.000000Z",
        "2025-02-29T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T12:00:60Z",
        "2026-11-23T12:00:00+24:00",
        "2026-11-23T12:00:00+0200",
        "2026-11-23T12:00:00.Z",
        "2026-11-23T12:00:00Z\n",
        " 2026-11-23T12:00:00Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:00:00-02:00",  # after year 9999 once in UTC
        "1764000000",
        "",
    ],
)
def test_normalize_refuses_what_is_not_an_rfc3339_instant(text: str) -> None:
    with pytest.raises(TimestampError):
        normalize(text)


def test_from_epoch_ms_is_exact() -> None:
    assert from_epoch_ms(0) == "1970-01-01T00:00:00.000000Z"
    assert from_epoch_ms(1_795_435_200_123) == "2026-11-23T12:00:00.123000Z"


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=9, minutes=30))]
        ),
    )
)
def test_round_trip_keeps_the_instant(moment: datetime) -> None:
    canonical = normalize(moment.isoformat())
    assert len(canonical) == 27
    assert canonical.endswith("Z")
    assert datetime.fromisoformat(canonical) == moment
    assert normalize(canonical) == canonical
    assert format_utc(moment) == canonical
