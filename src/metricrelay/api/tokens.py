"""OAuth2 client-credentials tokens: who gets one, and which bearer tokens are still good."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from metricrelay.aiapi.errors import unauthorized

__all__ = ["Grant", "OAuthError", "TokenIssuer"]

# Expired tokens are swept when the table grows past this, so a long demo cannot leak memory.
_SWEEP_ABOVE: Final = 10_000


class OAuthError(Exception):
    """A refusal of the token endpoint, answered in RFC 6749 §5.2 form as XSUAA does."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class Grant:
    access_token: str
    expires_in: int

    def body(self) -> dict[str, str | int]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": "",
            "jti": secrets.token_hex(16),
        }


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """``Basic base64(id:secret)``; RFC 6749 §2.3.1 form-encodes both parts first."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "Malformed HTTP Basic credentials") from None
    client_id, sep, client_secret = decoded.partition(":")
    if not sep:
        raise OAuthError(401, "invalid_client", "Malformed HTTP Basic credentials")
    return unquote_plus(client_id), unquote_plus(client_secret)


class TokenIssuer:
    """Issues opaque bearer tokens and checks them on every ``/v2`` call.

    Tokens live in memory only: after a restart every old token draws 401, which is what a
    client must survive anyway (it refreshes once). ``monotonic`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        expires_in: int,
        client_id: str | None = None,
        client_secret: str | None = None,
        static_token: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expires_in = expires_in
        self._client_id = client_id
        self._client_secret = client_secret
        self._static_token = static_token
        self._monotonic = monotonic
        self._expiry: dict[str, float] = {}

    def issue(self, form: Mapping[str, str], authorization: str | None) -> Grant:
        """Answer a token request (form fields, plus the Authorization header if any)."""
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError(400, "invalid_request", "Missing grant_type")
        if grant_type != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type}")
        basic = _basic_credentials(authorization)
        if basic is not None:
            client_id, client_secret = basic
        else:
            client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id:
            raise OAuthError(401, "invalid_client", "Missing client credentials")
        if self._client_id is not None and not (
            hmac.compare_digest(client_id.encode(), self._client_id.encode())
            and hmac.compare_digest(client_secret.encode(), (self._client_secret or "").encode())
        ):
            raise OAuthError(401, "invalid_client", "Bad credentials")
        return self._new_grant()

    def _new_grant(self) -> Grant:
        now = self._monotonic()
        if len(self._expiry) > _SWEEP_ABOVE:
            self._expiry = {tok: exp for tok, exp in self._expiry.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self._expires_in
        return Grant(token, self._expires_in)

    def check(self, authorization: str | None) -> None:
        """Raise the 401 ApiError unless ``authorization`` carries a live bearer token."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Missing bearer token (Authorization: Bearer <token>)")
        if self._static_token is not None and hmac.compare_digest(
            token.encode(), self._static_token.encode()
        ):
            return
        expiry = self._expiry.get(token)
        if expiry is None:
            raise unauthorized("Unknown bearer token")
        if self._monotonic() >= expiry:
            del self._expiry[token]
            raise unauthorized("Bearer token expired")
