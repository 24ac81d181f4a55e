"""metricrelay's one exception tree; whether retrying can help is a class attribute.

::

    MetricRelayError
    ├── ConfigError                  settings missing or contradictory (exit code 2)
    ├── AuthError                    the token service refused the credentials
    │   └── AuthUnavailable          the token service is unreachable or busy: retriable
    └── DeliveryError                the API did not accept a body; carries status and error body
        ├── RetriableDelivery        408, 429, 500, 502, 503, 504: retry after backoff/Retry-After
        │   └── NetworkError         timeout, refused or reset connection: no answer at all
        ├── PayloadTooLarge          413: split the body in halves
        ├── BadRequest               400: bisect to the item the server rejects
        ├── Unauthorized             401: refresh the token once, then it is a rejection
        └── RejectedDelivery         403, 404, 409, 422 and other 4xx: dead-letter as rejected
    RetriesExhausted                 the retry budget ran out; wraps the last retriable failure
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthError",
    "AuthUnavailable",
    "BadRequest",
    "ConfigError",
    "DeliveryError",
    "MetricRelayError",
    "NetworkError",
    "PayloadTooLarge",
    "RejectedDelivery",
    "RetriableDelivery",
    "RetriesExhausted",
    "Unauthorized",
    "delivery_error",
    "retriable_status",
]

_RETRIABLE_4XX = frozenset({408, 429})


def retriable_status(status: int) -> bool:
    """408, 429 and every 5xx (a gateway's 507 or 52x too, CONTRACT §2.2); also what is no
    answer of the API at all (a 3xx, as redirects are not followed). Only the other 4xx say
    that sending again cannot help."""
    return status in _RETRIABLE_4XX or not 400 <= status < 500


class MetricRelayError(Exception):
    """Base of every error metricrelay raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(MetricRelayError):
    """The settings cannot work: say which one and why."""


class AuthError(MetricRelayError):
    """The token service refused to issue a token (bad client id or secret)."""


class AuthUnavailable(AuthError):
    """The token service could not be reached or answered 5xx/429; ``retry_after`` is how long
    it asked us to wait (its ``Retry-After``), if it said."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryError(MetricRelayError):
    """The API did not accept a body. ``body`` is the server's error body (text), if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class RetriableDelivery(DeliveryError):
    retriable = True


class NetworkError(RetriableDelivery):
    """No HTTP answer: connection refused or reset, or the request timed out."""


class PayloadTooLarge(DeliveryError):
    """413: the body is too large for the server; it must be split."""


class BadRequest(DeliveryError):
    """400: some item of the body is unacceptable to the server."""


class Unauthorized(DeliveryError):
    """401: the token was refused (expired or revoked)."""


class RejectedDelivery(DeliveryError):
    """A 4xx that no retry or split can mend (not 408 or 429)."""


class RetriesExhausted(MetricRelayError):
    """The time budget for a body ran out; ``last`` is the final retriable failure."""

    def __init__(self, last: MetricRelayError, attempts: int) -> None:
        super().__init__(f"retries exhausted after {attempts} attempt(s): {last}")
        self.last = last
        self.attempts = attempts


def delivery_error(status: int, body: str, retry_after: float | None = None) -> DeliveryError:
    """The error class an HTTP status stands for (only called for non-2xx answers)."""
    message = f"HTTP {status}"
    if retriable_status(status):
        return RetriableDelivery(message, status=status, body=body, retry_after=retry_after)
    kind: type[DeliveryError] = {
        400: BadRequest,
        401: Unauthorized,
        413: PayloadTooLarge,
    }.get(status, RejectedDelivery)
    return kind(message, status=status, body=body)
