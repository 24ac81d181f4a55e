"""RFC 3339 parsing and the one UTC form the AI API and SAP's SDK both accept."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["TimestampError", "format_utc", "from_epoch_ms", "normalize"]

# RFC 3339 §5.6: a date, 'T' (or 't' / space, which the RFC allows), a time with optional
# fraction of any length, and a mandatory offset. A naive time is refused on purpose: guessing
# the producer's zone would silently shift a run's curve by hours.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z"
)
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """A timestamp that is not an RFC 3339 date-time with an offset, or not a real instant."""


def format_utc(moment: datetime) -> str:
    """Render an aware datetime as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


@functools.lru_cache(maxsize=1024)  # entries read together share their few milliseconds
def from_epoch_ms(ms: int) -> str:
    """The canonical form of a Unix time in milliseconds (a Redis stream id's first part)."""
    return format_utc(_EPOCH + timedelta(milliseconds=ms))


def normalize(text: str) -> str:
    """Parse an RFC 3339 timestamp with any offset; return it as canonical UTC.

    Fractions beyond microseconds are truncated (SAP's SDK parses at most six digits).
    """
    if _CANONICAL.match(text):  # what well-behaved producers send: check it is real, keep it
        try:
            datetime.fromisoformat(text[:-1])
        except ValueError as exc:
            raise TimestampError(f"is not a real date-time ({exc})") from None
        return text
    match = _RFC3339.match(text)
    if match is None:
        raise TimestampError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-11-23T12:00:00.123456Z"
        )
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if sign is None:
            zone = UTC
        else:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if offset >= timedelta(hours=24):
                raise TimestampError("has an offset outside ±23:59")
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        )
        return format_utc(moment)
    except OverflowError:
        raise TimestampError("is outside the years 0001-9999 once converted to UTC") from None
    except TimestampError:
        raise
    except ValueError as exc:
        raise TimestampError(f"is not a real date-time ({exc})") from None
