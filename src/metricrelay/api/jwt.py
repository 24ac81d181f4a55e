"""Compact JWS tokens signed with HS256 (RFC 7515/7519), with the standard library only.

XSUAA hands out JWT access tokens, and SAP's JavaScript and Java SDKs decode them (to read
``exp`` and ``zid`` for their token caches) before they send a single request: an opaque token
makes them fail. The reference server therefore signs its tokens; HMAC with a per-server random
key is enough, since only the server itself ever verifies them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = ["ALGORITHM", "JwtInvalid", "decode", "encode"]

ALGORITHM: Final = "HS256"
_HEADER: Final = {"alg": ALGORITHM, "typ": "JWT"}


class JwtInvalid(ValueError):
    """The token is not one this key signed: malformed, another algorithm, or a bad signature."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtInvalid("not base64url") from None


def _signature(signing_input: bytes, key: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def encode(claims: Mapping[str, Any], key: bytes) -> str:
    """``header.payload.signature``, each part base64url without padding."""
    header = _b64encode(orjson.dumps(_HEADER))
    payload = _b64encode(orjson.dumps(dict(claims)))
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_signature(signing_input, key))}"


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64decode(part))
    except orjson.JSONDecodeError:
        raise JwtInvalid(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise JwtInvalid(f"the {what} is not a JSON object")
    return value


def decode(token: str, key: bytes) -> dict[str, Any]:
    """The claims of ``token`` once its HS256 signature under ``key`` is checked.

    The signature is compared before the payload is parsed, so nothing a forger wrote is
    interpreted; the header must name HS256 (``alg: none`` and friends are refused). Claims
    such as ``exp`` are the caller's to judge.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise JwtInvalid("not a compact JWS (header.payload.signature)")
    header, payload, signature = parts
    try:
        signing_input = f"{header}.{payload}".encode("ascii")
    except UnicodeEncodeError:
        raise JwtInvalid("not base64url") from None
    if not hmac.compare_digest(_b64decode(signature), _signature(signing_input, key)):
        raise JwtInvalid("bad signature")
    if _json_object(header, "header").get("alg") != ALGORITHM:
        raise JwtInvalid(f"the algorithm is not {ALGORITHM}")
    return _json_object(payload, "payload")
