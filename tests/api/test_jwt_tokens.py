"""``POST /oauth/token`` answers signed JWTs, and every /v2 call is checked against them."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from tests.support.reference_api import CLIENT_ID, CLIENT_SECRET, Api, StartApi, assert_error

from metricrelay.relay.auth import OAuthClientCredentials

pytestmark = pytest.mark.integration  # the reference server on a loopback port

STAMP = "2026-11-23T12:00:00.000000Z"
BODY = {
    "executionId": "exec-0001",
    "metrics": [{"name": "loss", "value": 0.5, "step": 1, "timestamp": STAMP}],
}


def _json(part: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def decoded(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, read without checking it, as SAP's SDKs read them."""
    header, payload, _ = token.split(".")
    return _json(header), _json(payload)


def forge(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept."""
    header, _, signature = token.split(".")
    claims = {**decoded(token)[1], **changes}
    raw = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


async def test_the_token_answer_and_its_claims(start_api: StartApi) -> None:
    api = await start_api(token_expires_in=600)
    reply = await api.fetch_token()
    assert reply.status == 200
    body = reply.json
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "jti"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "bearer",
        600,
        "uaa.resource",
    )
    header, claims = decoded(body["access_token"])
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert {"exp", "iat", "client_id", "cid", "zid", "jti", "scope", "grant_type", "iss"} <= set(
        claims
    )
    assert claims["client_id"] == claims["cid"] == CLIENT_ID
    assert claims["jti"] == body["jti"]
    assert claims["scope"] == ["uaa.resource"]
    assert claims["grant_type"] == "client_credentials"
    assert claims["iss"] == f"{api.url}/oauth/token"
    assert claims["exp"] - claims["iat"] == 600
    assert (await api.patch(BODY, headers=api.headers(body["access_token"]))).status == 204


async def test_a_tampered_token_is_401_and_stores_nothing(api: Api) -> None:
    for tampered in (
        forge(api.token, exp=decoded(api.token)[1]["exp"] + 86400),  # a longer life
        forge(api.token, cid="sb-someone-else"),
        api.token[:-4] + ("AAAA" if not api.token.endswith("AAAA") else "BBBB"),
    ):
        reply = await api.patch(BODY, headers=api.headers(tampered))
        error = assert_error(reply, 401)
        assert error["message"] == "Unknown bearer token: bad signature"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await api.get(executionIds="exec-0001")).json["count"] == 0


async def test_an_expired_token_is_401(start_api: StartApi) -> None:
    now = [5000.0]
    api = await start_api(token_expires_in=30, monotonic=lambda: now[0])
    assert (await api.patch(BODY)).status == 204
    now[0] += 30
    error = assert_error(await api.patch(BODY), 401)
    assert error["message"] == "Bearer token expired"
    fresh = (await api.fetch_token()).json["access_token"]  # a new one works again
    assert (await api.patch(BODY, headers=api.headers(fresh))).status == 204


async def test_a_token_of_another_server_instance_is_401(start_api: StartApi) -> None:
    first, second = await start_api(), await start_api()
    reply = await second.patch(BODY, headers=second.headers(first.token))
    assert assert_error(reply, 401)["message"] == "Unknown bearer token: bad signature"


async def test_the_relays_oauth_client_takes_jwts_as_they_come(start_api: StartApi) -> None:
    api = await start_api(token_expires_in=600)
    async with aiohttp.ClientSession() as session:
        oauth = OAuthClientCredentials(
            session, f"{api.url}/oauth/token", CLIENT_ID, SecretStr(CLIENT_SECRET)
        )
        headers = await oauth.headers()
        token = headers["Authorization"].removeprefix("Bearer ")
        assert decoded(token)[1]["cid"] == CLIENT_ID
        reply = await api.patch(BODY, headers={**api.headers(token), **headers})
        assert reply.status == 204
        await oauth.invalidate(headers)  # as after a 401: the next call fetches a new JWT
        renewed = await oauth.headers()
        assert renewed != headers and oauth.refreshes == 2
        reply = await api.patch(BODY, headers={**api.headers(), **renewed})
        assert reply.status == 204
    assert len((await api.resource("exec-0001"))["metrics"]) == 1  # the same point, stored once
