"""Delivering one PATCH body: HTTP status → outcome, retries, 413 halving, 400 bisection.

:meth:`Dispatcher.deliver` does not raise for a failed delivery: it answers with the parts of the
body that could not be delivered, each with its dead-letter reason; everything else was accepted.
The exception is :class:`AuthError` (the token service refuses our credentials): no body can be
delivered until an operator fixes them, so it propagates instead of dead-lettering all traffic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aiohttp

from metricrelay.deadletter import Reason
from metricrelay.errors import (
    BadRequest,
    DeliveryError,
    NetworkError,
    PayloadTooLarge,
    RejectedDelivery,
    RetriesExhausted,
    Unauthorized,
    delivery_error,
)
from metricrelay.relay.auth import TokenProvider
from metricrelay.relay.batching import Body
from metricrelay.retry import RetryPolicy, call_with_retry, parse_retry_after

__all__ = ["Delivery", "DeliveryLimiter", "Dispatcher", "Failure", "RequestObserver"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class Failure:
    """A part of a body that goes to the dead-letter stream."""

    body: Body
    reason: Reason
    error: str
    status: int | None
    attempts: int


@dataclass(slots=True)
class Delivery:
    """What became of one body: failures (if any); requests made; retries; splits."""

    failures: list[Failure] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    splits: int = 0  # after a 413 or a 400
    too_large_splits: int = 0  # those after a 413
    statuses: dict[int, int] = field(default_factory=dict)


class RequestObserver(Protocol):
    """Told of every PATCH (metrics): its start, then its HTTP status, "error" or "cancelled"."""

    def request_started(self) -> None: ...

    def request_finished(self, result: int | str, seconds: float) -> None: ...


class DeliveryLimiter(RequestObserver, Protocol):
    """A :class:`RequestObserver` that also paces: each PATCH first waits ``start_delay()``."""

    def start_delay(self) -> float: ...


class Dispatcher:
    """PATCHes bodies over one keep-alive session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        tokens: TokenProvider,
        policy: RetryPolicy,
        *,
        timeout: float,
        with_resource_group: bool = True,
        on_too_large: Callable[[Body], object] | None = None,
        observer: RequestObserver | None = None,
        limiter: DeliveryLimiter | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.url = url
        self.tokens = tokens
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.with_resource_group = with_resource_group
        self.on_too_large = on_too_large
        self.observer = observer
        # the delivery slots: their adaptive limit learns from every answer and paces the starts
        self.limiter = limiter
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()

    async def deliver(self, body: Body) -> Delivery:
        delivery = Delivery()
        await self._send(body, delivery)
        return delivery

    async def _send(self, body: Body, delivery: Delivery) -> None:
        """Send ``body``; on 413/400 send its halves in order; record what cannot be sent."""
        try:
            await self._send_with_retry(body, delivery)
            return
        except RetriesExhausted as exc:
            delivery.failures.append(self._failure(body, Reason.EXHAUSTED, exc.last, exc.attempts))
            return
        except (PayloadTooLarge, BadRequest) as exc:
            reason = Reason.TOO_LARGE if isinstance(exc, PayloadTooLarge) else Reason.REJECTED
            if body.item_count < 2:
                delivery.failures.append(self._failure(body, reason, exc, 1))
                return
            if isinstance(exc, PayloadTooLarge):
                delivery.too_large_splits += 1
                if self.on_too_large is not None:
                    self.on_too_large(body)
        except (Unauthorized, RejectedDelivery) as exc:
            delivery.failures.append(self._failure(body, Reason.REJECTED, exc, 1))
            return
        delivery.splits += 1
        for half in body.split():  # in order: the first half lands before the second
            await self._send(half, delivery)

    async def _send_with_retry(self, body: Body, delivery: Delivery) -> None:
        data = body.encode()

        def count_retry(error: object, attempt: int, delay: float) -> None:
            delivery.retries += 1
            log.debug("retry %d of %s in %.2fs: %s", attempt, body.execution_id, delay, error)

        await call_with_retry(
            lambda: self._patch_refreshing(body, data, delivery),
            self.policy,
            sleep=self.sleep,
            clock=self.clock,
            rng=self.rng,
            on_retry=count_retry,
        )

    async def _patch_refreshing(self, body: Body, data: bytes, delivery: Delivery) -> None:
        """One attempt; a 401 gets one fresh token and one more try within the attempt."""
        headers = await self.tokens.headers()
        try:
            await self._patch(body, data, headers, delivery)
        except Unauthorized:
            await self.tokens.invalidate(headers)
            await self._patch(body, data, await self.tokens.headers(), delivery)

    async def _patch(
        self, body: Body, data: bytes, auth: dict[str, str], delivery: Delivery
    ) -> None:
        headers = {"Content-Type": CONTENT_TYPE, **auth}
        if self.with_resource_group:
            headers["AI-Resource-Group"] = body.resource_group
        if self.limiter is not None and (turn := self.limiter.start_delay()) > 0:
            await self.sleep(turn)  # paced: a request-rate limit is met at its rate
        delivery.requests += 1
        observers = [o for o in (self.observer, self.limiter) if o is not None]
        for observer in observers:
            observer.request_started()
        started = time.perf_counter()
        result: int | str = "cancelled"  # no answer and no network error: the task was cancelled
        try:
            status, text, retry_after = await self._exchange(data, headers)
            result = status
        except NetworkError:
            result = "error"
            raise
        finally:
            seconds = time.perf_counter() - started
            for observer in observers:
                observer.request_finished(result, seconds)
        delivery.statuses[status] = delivery.statuses.get(status, 0) + 1
        if status >= 300:
            raise delivery_error(status, text[:4000], retry_after)

    async def _exchange(
        self, data: bytes, headers: dict[str, str]
    ) -> tuple[int, str, float | None]:
        """One PATCH: its status, its error text (empty on success) and its Retry-After."""
        try:
            async with self.session.patch(
                self.url, data=data, headers=headers, timeout=self.timeout
            ) as response:
                if response.status < 300:
                    return response.status, "", None
                text = await response.text(errors="replace")
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), datetime.now(UTC)
                )
                return response.status, text, retry_after
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise NetworkError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _failure(body: Body, reason: Reason, error: Exception, attempts: int) -> Failure:
        status = error.status if isinstance(error, DeliveryError) else None
        detail = error.body if isinstance(error, DeliveryError) and error.body else str(error)
        return Failure(body, reason, detail, status, attempts)
