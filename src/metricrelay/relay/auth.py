"""Token providers behind one interface: OAuth client credentials (cached), a fixed token, none.

Neither the client secret nor a token is ever logged or put into an exception message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, Protocol

import aiohttp
import orjson
from pydantic import SecretStr

from metricrelay.errors import AuthError, AuthUnavailable, ConfigError
from metricrelay.retry import parse_retry_after
from metricrelay.settings import ApiSettings, Settings, env_names

__all__ = [
    "DEFAULT_LIFETIME_S",
    "REFRESH_FRACTION",
    "AuthMode",
    "FixedToken",
    "NoAuth",
    "OAuthClientCredentials",
    "TokenProvider",
    "auth_mode",
    "build_token_provider",
]

# How requests are authorised: nothing (in-cluster), a fixed token, or OAuth client credentials.
AuthMode = Literal["none", "token", "oauth"]

log = logging.getLogger(__name__)

# Refresh once 80 % of a token's lifetime has passed: XSUAA's 43199 s tokens are renewed after
# about 9.6 h, a 60 s test token after 48 s. Proportional, so short-lived tokens still get a
# margin, and long-lived ones are not renewed needlessly often.
REFRESH_FRACTION: Final = 0.8
# Used when a token answer has no usable expires_in (RFC 6749 only recommends it).
DEFAULT_LIFETIME_S: Final = 300.0
# While an early renewal fails for a moment (the token service unreachable, 5xx, 429), the
# token in hand is used until this share of its life, and renewal tried again every few s.
_USABLE_FRACTION: Final = 0.95
_RENEW_AGAIN_S: Final = 5.0
_MAX_DETAIL: Final = 200
_AUTHORIZATION: Final = "Authorization"


class TokenProvider(Protocol):
    """Where the dispatcher gets its Authorization header from."""

    async def headers(self) -> dict[str, str]:
        """The header(s) to send with the next request (a fresh dict; may be empty)."""
        ...

    async def invalidate(self, rejected: dict[str, str]) -> None:
        """The API answered 401 to ``rejected``: stop handing out that token."""
        ...


class NoAuth:
    """In-cluster tracking endpoint: sends an empty ``Authorization`` header.

    An empty value rather than no header, because that is exactly what SAP's SDK sends there
    (its in-cluster token function returns ""), so the endpoint is known to accept it.
    """

    async def headers(self) -> dict[str, str]:
        return {_AUTHORIZATION: ""}

    async def invalidate(self, rejected: Mapping[str, str]) -> None:
        """Nothing to refresh; the caller's second 401 makes it a rejection."""


class FixedToken:
    """A bearer token given once (METRICRELAY_TOKEN); it cannot be refreshed."""

    def __init__(self, token: SecretStr) -> None:
        value = token.get_secret_value().strip()
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer":  # tolerate a pasted "Bearer …" header value
            value = rest.strip()
        if not value:
            raise ConfigError("METRICRELAY_TOKEN is empty")
        self._header = f"Bearer {value}"
        self._warned = False

    def __repr__(self) -> str:
        return "FixedToken(**********)"

    async def headers(self) -> dict[str, str]:
        return {_AUTHORIZATION: self._header}

    async def invalidate(self, rejected: Mapping[str, str]) -> None:
        if not self._warned:
            self._warned = True
            log.warning("the API refused the fixed token (METRICRELAY_TOKEN); it cannot be renewed")


def _lifetime(value: object) -> float:
    """Seconds from ``expires_in``; XSUAA sends an integer, some servers a numeric string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    log.warning("token answer without a usable expires_in; assuming %.0fs", DEFAULT_LIFETIME_S)
    return DEFAULT_LIFETIME_S


def _error_detail(body: bytes) -> str:
    """``error`` / ``error_description`` of an OAuth error answer (RFC 6749 §5.2), if any."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [data.get("error"), data.get("error_description")]
    text = ": ".join(part for part in parts if isinstance(part, str) and part)
    return f" ({text[:_MAX_DETAIL]})" if text else ""


class OAuthClientCredentials:
    """OAuth2 client credentials grant, cached until :data:`REFRESH_FRACTION` of its lifetime.

    One refresh is in flight at a time: concurrent callers wait for it and share its token, or
    its failure. A busy token service's ``Retry-After`` is honoured by every caller: until it
    has passed, callers get the same failure (with the time left) without a request.
    ``refreshes`` and ``failures`` count token requests for metrics.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 30.0,
        retry_after_cap: float = 120.0,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._session = session
        self._secret = client_secret
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_after_cap = retry_after_cap
        self._lock = asyncio.Lock()
        self._header: str | None = None
        self._last_token = ""  # kept after invalidate(), only to scrub it from messages
        self._refresh_at = -math.inf
        self._usable_until = -math.inf  # the token in hand is still good, a renewal failing
        self._last_error: AuthError | None = None
        self._quiet_until = -math.inf  # the token service asked not to be called before this
        self.refreshes = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def headers(self) -> dict[str, str]:
        header = self._current()
        if header is None:
            seen = self.refreshes + self.failures
            async with self._lock:
                header = self._current()  # a refresh finished while we waited: use its token
                if header is None:
                    header = await self._renewed(seen)
        return {_AUTHORIZATION: header}

    async def _renewed(self, seen: int) -> str:
        """A new token; the one in hand while renewing it early fails only for a moment."""
        if self._last_error is not None and (
            # the refresh we queued behind just failed: share its outcome rather than send
            # the token service one more request per waiting caller; or it asked us to wait
            self.refreshes + self.failures != seen or self._clock() < self._quiet_until
        ):
            if (usable := self._usable()) is not None:
                return usable
            raise self._repeat_last_error()
        try:
            return await self._refresh()
        except AuthUnavailable:
            if (usable := self._usable()) is None:
                raise
            self._quiet_until = max(self._quiet_until, self._clock() + _RENEW_AGAIN_S)
            log.warning(
                "renewing the token failed; the current one is used for %.0fs more at most",
                self._usable_until - self._clock(),
            )
            return usable

    def _usable(self) -> str | None:
        """The token in hand, if the API has not refused it and its life is not nearly over."""
        if self._header is not None and self._clock() < self._usable_until:
            return self._header
        return None

    def _repeat_last_error(self) -> AuthError:
        error = self._last_error
        assert error is not None
        if isinstance(error, AuthUnavailable):
            left = self._quiet_until - self._clock()
            return AuthUnavailable(str(error), retry_after=left if left > 0 else None)
        return type(error)(str(error))

    async def invalidate(self, rejected: Mapping[str, str]) -> None:
        # Only the token that was refused is dropped: after N concurrent 401s the first call
        # clears it and the others find a different (or no) token, so one refresh follows.
        # No await between the comparison and the clearing, so no other task interleaves.
        if self._header is not None and rejected.get(_AUTHORIZATION) == self._header:
            self._header = None
            log.info("the API refused the token from %s; fetching a new one", self.token_url)

    def _current(self) -> str | None:
        if self._header is not None and self._clock() < self._refresh_at:
            return self._header
        return None

    async def _refresh(self) -> str:
        started = self._clock()  # before the request: the token's life began after this
        try:
            token, lifetime = await self._request()
        except AuthError as exc:
            self.failures += 1
            self._last_error = exc
            wait = getattr(exc, "retry_after", None)
            self._quiet_until = started + min(wait, self._retry_after_cap) if wait else -math.inf
            log.warning("token request failed: %s", exc)
            raise
        self.refreshes += 1
        self._last_error = None
        self._last_token = token
        self._header = f"Bearer {token}"
        self._refresh_at = started + REFRESH_FRACTION * lifetime
        self._usable_until = started + _USABLE_FRACTION * lifetime
        log.info(
            "new token from %s for %s: valid %.0fs, renewed after %.0fs",
            self.token_url,
            self.client_id,
            lifetime,
            REFRESH_FRACTION * lifetime,
        )
        return self._header

    async def _request(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret.get_secret_value(),
        }
        try:
            async with self._session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,  # never re-send the secret to wherever a redirect points
            ) as response:
                status = response.status
                body = await response.read()
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), datetime.now(UTC)
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = self._scrub(f"{type(exc).__name__}: {exc}")
            raise AuthUnavailable(f"token service {self.token_url} unreachable: {reason}") from exc
        return self._parse(status, body, retry_after)

    def _parse(self, status: int, body: bytes, retry_after: float | None) -> tuple[str, float]:
        where = f"token service {self.token_url}"
        if status in (408, 429) or status >= 500:
            detail = self._scrub(_error_detail(body))
            after = f", retry after {retry_after:g}s" if retry_after is not None else ""
            raise AuthUnavailable(
                f"{where} answered HTTP {status}{detail}{after}", retry_after=retry_after
            )
        if not 200 <= status < 300:
            detail = self._scrub(_error_detail(body))
            refused = "refused the credentials of" if status in (400, 401, 403) else "for"
            raise AuthError(f"{where} {refused} client {self.client_id}: HTTP {status}{detail}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AuthError(f"{where} answered HTTP {status} without a JSON body") from None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{where} answered HTTP {status} without an access_token")
        return token, _lifetime(data.get("expires_in"))

    def _scrub(self, text: str) -> str:
        """Belt and braces: an echoing server must not smuggle a secret into a message."""
        for secret in (self._secret.get_secret_value(), self._last_token):
            if secret:
                text = text.replace(secret, "**********")
        return text


def auth_mode(api: ApiSettings) -> AuthMode:
    """How requests are authorised; :class:`ConfigError` names what is missing.

    ``none``: in-cluster tracking endpoint (it wins when set, as in SAP's SDK); ``token``: a
    fixed bearer token (wins over client credentials); ``oauth``: client credentials against
    ``auth_url``.
    """
    if api.tracking_endpoint is not None:
        if api.execution_id is None:
            raise ConfigError(
                f"{env_names('tracking_endpoint')} is set (in-cluster mode) but "
                f"{env_names('execution_id')} is not"
            )
        return "none"
    if api.api_url is None:
        raise ConfigError(
            f"no metrics endpoint: set {env_names('api_url')} or METRICRELAY_SERVICE_KEY, "
            f"or {env_names('tracking_endpoint')} with {env_names('execution_id')} "
            "inside an AI Core execution"
        )
    if api.token is not None:
        return "token"
    missing = [
        env_names(name)
        for name in ("client_id", "client_secret", "auth_url")
        if getattr(api, name) is None
    ]
    if not missing:
        return "oauth"
    raise ConfigError(
        f"{env_names('api_url')} is set but there are no credentials: set METRICRELAY_TOKEN, "
        f"or METRICRELAY_SERVICE_KEY, or the missing {', '.join(missing)}"
    )


def build_token_provider(settings: Settings, session: aiohttp.ClientSession) -> TokenProvider:
    """The provider :func:`auth_mode` calls for; token requests share ``session``."""
    api = settings.api
    mode = auth_mode(api)
    if mode == "none":
        return NoAuth()
    if mode == "token" and api.token is not None:
        return FixedToken(api.token)
    if (
        mode == "oauth"
        and api.auth_url is not None
        and api.client_id is not None
        and api.client_secret is not None
    ):
        return OAuthClientCredentials(
            session,
            api.auth_url,
            api.client_id,
            api.client_secret,
            timeout=api.request_timeout,
            retry_after_cap=settings.worker.retry_after_cap,
        )
    raise ConfigError(f"authorisation mode {mode!r} is not fully configured")  # auth_mode checks
