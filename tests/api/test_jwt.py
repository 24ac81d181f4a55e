"""The reference server's JWTs without a server: signing, verifying, the claims, the checks."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from metricrelay.aiapi.errors import ApiError
from metricrelay.api import jwt
from metricrelay.api.tokens import DEFAULT_ZONE_ID, TokenIssuer

KEY = b"k" * 32
TOKEN_URL = "http://127.0.0.1:5000/oauth/token"
FORM = {"grant_type": "client_credentials", "client_id": "sb-c", "client_secret": "s"}


def part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def payload_of(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    claims: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def test_round_trip_and_the_header() -> None:
    token = jwt.encode({"sub": "me", "exp": 5}, KEY)
    header = token.split(".")[0]
    assert orjson.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    assert "=" not in token  # base64url without padding, as RFC 7515 writes it
    assert jwt.decode(token, KEY) == {"sub": "me", "exp": 5}


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t.split(".")[0] + "." + part({"sub": "admin"}) + "." + t.split(".")[2],
         "bad signature"),
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "bad signature"),
        (lambda t: jwt.encode({"sub": "me"}, b"another key"), "bad signature"),
        (lambda t: t.rsplit(".", 1)[0] + ".", "not a compact JWS"),  # alg none: no signature
        (lambda t: "not-a-token", "not a compact JWS"),
        (lambda t: "a.b.c.d", "not a compact JWS"),
        (lambda t: "é.b.c", "not base64url"),
    ],
)  # fmt: skip
def test_anything_but_our_signature_is_refused(mangle: Callable[[str], str], reason: str) -> None:
    token = jwt.encode({"sub": "me"}, KEY)
    with pytest.raises(jwt.JwtInvalid, match=reason):
        jwt.decode(mangle(token), KEY)


def test_another_algorithm_in_the_header_is_refused_even_with_a_valid_mac() -> None:
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    signing_input = f"{part({'alg': 'none'})}.{part({'sub': 'me'})}"
    mac = hmac.new(KEY, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(jwt.JwtInvalid, match="algorithm"):
        jwt.decode(forged, KEY)


def issuer(now: list[float], **options: Any) -> TokenIssuer:
    options.setdefault("key", KEY)
    return TokenIssuer(expires_in=60, monotonic=lambda: now[0], **options)


def test_the_claims_are_those_xsuaa_writes() -> None:
    now = [1000.0]
    tokens = issuer(now, client_id="sb-c", client_secret="s")
    grant = tokens.issue(FORM, None, token_url=TOKEN_URL)
    claims = jwt.decode(grant.access_token, KEY)
    assert claims["client_id"] == claims["cid"] == claims["sub"] == "sb-c"
    assert claims["zid"] == DEFAULT_ZONE_ID
    assert claims["scope"] == ["uaa.resource"]
    assert claims["grant_type"] == "client_credentials"
    assert claims["iss"] == TOKEN_URL
    assert isinstance(claims["iat"], int) and claims["exp"] == claims["iat"] + 60
    body = grant.body()
    assert body["jti"] == claims["jti"] and body["scope"] == "uaa.resource"
    assert (body["token_type"], body["expires_in"]) == ("bearer", 60)
    again = tokens.issue(FORM, None, token_url=TOKEN_URL)
    assert jwt.decode(again.access_token, KEY)["jti"] != claims["jti"]


def refusal(tokens: TokenIssuer, token: str) -> str:
    with pytest.raises(ApiError) as refused:
        tokens.check(f"Bearer {token}")
    assert refused.value.status == 401
    return refused.value.message


def test_check_wants_signature_zone_client_and_time() -> None:
    now = [1000.0]
    tokens = issuer(now, client_id="sb-c", client_secret="s")
    token = tokens.issue(FORM, None, token_url=TOKEN_URL).access_token
    tokens.check(f"Bearer {token}")

    claims = payload_of(token)
    tampered = jwt.encode({**claims, "exp": claims["exp"] + 3600}, b"guessed key")
    assert refusal(tokens, tampered) == "Unknown bearer token: bad signature"
    other_zone = jwt.encode({**claims, "zid": "someone-else"}, KEY)
    assert refusal(tokens, other_zone) == "Unknown bearer token: not issued by this server"
    other_client = jwt.encode({**claims, "cid": "sb-other"}, KEY)
    assert refusal(tokens, other_client) == "Unknown bearer token: not issued by this server"
    restarted = issuer(now, client_id="sb-c", client_secret="s", key=None)  # a new random key
    assert refusal(restarted, token) == "Unknown bearer token: bad signature"

    now[0] += 59.9
    tokens.check(f"Bearer {token}")
    now[0] += 0.1
    assert refusal(tokens, token) == "Bearer token expired"


def test_a_fixed_token_is_still_accepted_beside_the_jwts() -> None:
    tokens = issuer([0.0], static_token="fixed-token-1")
    tokens.check("Bearer fixed-token-1")
    tokens.check(f"Bearer {tokens.issue(FORM, None, token_url=TOKEN_URL).access_token}")
    assert refusal(tokens, "fixed-token-2").startswith("Unknown bearer token")
