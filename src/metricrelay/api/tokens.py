"""OAuth2 client-credentials tokens as XSUAA issues them (signed JWTs): issuing and checking."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from metricrelay.aiapi.errors import unauthorized
from metricrelay.api import jwt

__all__ = ["DEFAULT_ZONE_ID", "SCOPES", "Grant", "OAuthError", "TokenIssuer"]

# The identity zone (tenant) named in every token's ``zid``: SAP's JS SDK keys its token cache by
# it. One fixed, uuid-shaped id, since the reference server has one tenant.
DEFAULT_ZONE_ID: Final = "6d657472-6963-4072-a56c-6179000000a1"
# What XSUAA grants a client-credentials client that has no further authorities.
SCOPES: Final = ("uaa.resource",)


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
    jti: str
    scope: tuple[str, ...] = SCOPES

    def body(self) -> dict[str, str | int]:
        """The token answer; ``scope`` space-separated there (RFC 6749 §3.3), a list in the JWT."""
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": " ".join(self.scope),
            "jti": self.jti,
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
    """Issues signed JWT access tokens and checks them on every ``/v2`` call.

    The HS256 key is random per instance and never leaves memory: after a restart every old
    token draws 401, which is what a client must survive anyway (it refreshes once). Nothing is
    kept per token. ``iat``/``exp`` are whole seconds, as XSUAA writes them, on the injectable
    ``monotonic`` clock anchored once to the wall clock (to the second), so that tests age
    tokens by moving that clock and a wall-clock step cannot revive or kill a token.
    """

    def __init__(
        self,
        *,
        expires_in: int,
        client_id: str | None = None,
        client_secret: str | None = None,
        static_token: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        zone_id: str = DEFAULT_ZONE_ID,
        key: bytes | None = None,
    ) -> None:
        self._expires_in = expires_in
        self._client_id = client_id
        self._client_secret = client_secret
        self._static_token = static_token
        self._monotonic = monotonic
        self._zone_id = zone_id
        self._key = key if key is not None else secrets.token_bytes(32)
        self._epoch_offset = round(time.time() - monotonic())

    def _now(self) -> float:
        """Seconds since the epoch, on the monotonic clock."""
        return self._monotonic() + self._epoch_offset

    def issue(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        *,
        token_url: str,
    ) -> Grant:
        """Answer a token request (form fields, plus the Authorization header if any).

        ``token_url`` is where the request came to: the token's ``iss``, as with XSUAA.
        """
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
            hmac.compare_digest(
                client_id.encode("utf-8", "surrogatepass"), self._client_id.encode()
            )
            and hmac.compare_digest(
                client_secret.encode("utf-8", "surrogatepass"),
                (self._client_secret or "").encode(),
            )
        ):
            raise OAuthError(401, "invalid_client", "Bad credentials")
        return self._new_grant(client_id, grant_type, token_url)

    def _new_grant(self, client_id: str, grant_type: str, token_url: str) -> Grant:
        issued_at = int(self._now())
        jti = secrets.token_hex(16)
        claims: dict[str, Any] = {
            "jti": jti,
            "sub": client_id,
            "client_id": client_id,
            "cid": client_id,
            "azp": client_id,
            "grant_type": grant_type,
            "scope": list(SCOPES),
            "zid": self._zone_id,
            "iss": token_url,
            "aud": ["uaa"],
            "iat": issued_at,
            "exp": issued_at + self._expires_in,
        }
        return Grant(jwt.encode(claims, self._key), self._expires_in, jti)

    def check(self, authorization: str | None) -> None:
        """Raise the 401 ApiError unless ``authorization`` carries a live bearer token.

        Live means: the fixed token, or a JWT this instance signed, for its zone and (when one
        is configured) its client, whose ``exp`` has not passed.
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Missing bearer token (Authorization: Bearer <token>)")
        if self._static_token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogatepass"), self._static_token.encode()
        ):
            return
        try:
            claims = jwt.decode(token, self._key)
        except jwt.JwtInvalid as exc:
            raise unauthorized(f"Unknown bearer token: {exc}") from None
        if not self._ours(claims):
            raise unauthorized("Unknown bearer token: not issued by this server")
        expires = claims.get("exp")
        if not isinstance(expires, int) or isinstance(expires, bool) or self._now() >= expires:
            raise unauthorized("Bearer token expired")

    def _ours(self, claims: Mapping[str, Any]) -> bool:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer.endswith("/oauth/token"):
            return False
        if claims.get("zid") != self._zone_id:
            return False
        return self._client_id is None or claims.get("cid") == self._client_id
