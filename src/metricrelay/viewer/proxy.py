"""The server side of ``metricrelay view``: GETs to the AI API with a token the page never sees.

Only two reads pass: ``/lm/executions`` (with ``/$count``) and ``/lm/metrics``. Whatever goes
wrong is answered to the page as ``{"error": {...}}`` with a message a person can act on —
which credential and which resource group a 401/403 concerns, or that the API is unreachable —
and every message is scrubbed of the client secret and the token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

from metricrelay.errors import AuthError, AuthUnavailable
from metricrelay.relay.auth import TokenProvider, auth_mode
from metricrelay.settings import Settings, env_names

__all__ = ["PATHS", "ApiProxy", "ProxyReply", "describe_credential"]

log = logging.getLogger(__name__)

# what the page may read, relative to the API root (…/v2)
PATHS: Final = frozenset({"/lm/executions", "/lm/executions/$count", "/lm/metrics"})
_MAX_DETAIL: Final = 300
_SCRUBBED: Final = "**********"


@dataclass(frozen=True, slots=True)
class ProxyReply:
    status: int
    body: bytes
    content_type: str = "application/json"


def describe_credential(settings: Settings) -> str:
    """Which credential the proxy uses, named by its settings; never a secret."""
    api = settings.api
    if auth_mode(api) == "token":
        return f"the fixed token ({env_names('token')})"
    return (
        f"client id {api.client_id!r} ({env_names('client_id')} with "
        f"{env_names('client_secret')}) at the token service {api.auth_url}"
    )


def _upstream_message(body: bytes) -> str:
    """The AI API error's ``message`` (or the OAuth ``error_description``), shortened."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_MAX_DETAIL].decode(errors="replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_DETAIL]
    return ""


def _upstream_code(body: bytes) -> str:
    """The AI API error's ``code``, else ``api_error``."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "api_error"
    code = error.get("code") if isinstance(error, dict) else None
    return str(code)[:_MAX_DETAIL] if isinstance(code, str | int) and code != "" else "api_error"


class ApiProxy:
    """Forwards the page's GETs with the worker's token provider; one per ``metricrelay view``."""

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, tokens: TokenProvider
    ) -> None:
        api = settings.api
        if api.api_url is None:  # auth_mode() refused this already; kept for the type checker
            raise ValueError("no API URL")
        self.api_url = api.api_url
        self.default_group = api.resource_group
        self.credential = describe_credential(settings)
        self._secrets = [
            s.get_secret_value() for s in (api.client_secret, api.token) if s is not None
        ]
        self._session = session
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=api.request_timeout)

    def error(self, status: int, code: str, message: str, group: str) -> ProxyReply:
        body = {
            "error": {
                "code": code,
                "message": self.scrub(message),
                "credential": self.credential,
                "resourceGroup": group,
                "api": self.api_url,
            }
        }
        return ProxyReply(status, orjson.dumps(body))

    def scrub(self, text: str, *also: str) -> str:
        """``text`` without the client secret, the fixed token and ``also`` (the token a
        request carried: an OAuth token is fetched, not configured)."""
        for secret in (*self._secrets, *also):
            if secret:
                text = text.replace(secret, _SCRUBBED)
        return text

    async def get(self, path: str, query: Mapping[str, str], group: str) -> ProxyReply:
        """GET ``path`` (one of :data:`PATHS`) for ``group``; one fresh token after a 401."""
        if path not in PATHS:
            return self.error(404, "not_proxied", f"{path} is not one of the proxied reads", group)
        for attempt in (1, 2):
            try:
                headers = await self._tokens.headers()
            except AuthUnavailable as exc:
                return self.error(502, "token_service_unreachable", str(exc), group)
            except AuthError as exc:
                message = f"{exc}. Check {self.credential}."
                return self.error(401, "credentials_refused", message, group)
            headers["AI-Resource-Group"] = group
            headers["Accept"] = "application/json"
            try:
                reply = await self._send(path, query, headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                message = f"the AI API at {self.api_url} is unreachable ({reason})"
                return self.error(502, "api_unreachable", message, group)
            if reply.status == 401 and attempt == 1:
                await self._tokens.invalidate(headers)
                continue
            sent = headers.get("Authorization", "").partition(" ")[2]
            return self._answer(reply, group, sent)
        raise AssertionError("unreachable")  # the loop returns on its second pass

    async def _send(self, path: str, query: Mapping[str, str], headers: dict[str, str]) -> Any:
        async with self._session.get(
            self.api_url + path,
            params=dict(query),
            headers=headers,
            timeout=self._timeout,
            allow_redirects=False,  # the token goes to the configured API and nowhere else
        ) as response:
            body = await response.read()
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            return ProxyReply(response.status, body, kind)

    def _answer(self, reply: ProxyReply, group: str, token: str) -> ProxyReply:
        """A JSON success as it came; anything else rebuilt as the page's error body, the
        upstream message scrubbed of the secret and of ``token`` (a gateway may echo it)."""
        is_json = reply.content_type == "application/json"
        if reply.status < 300 and is_json:
            return reply
        detail = self.scrub(_upstream_message(reply.body), token)
        suffix = f": {detail}" if detail else ""
        if reply.status == 401:
            message = f"the AI API refused the token of {self.credential}{suffix}"
            return self.error(401, "unauthorized", message, group)
        if reply.status == 403:
            message = (
                f"the AI API does not let {self.credential} read resource group {group!r}{suffix}"
            )
            return self.error(403, "forbidden", message, group)
        if reply.status < 300:  # a login page or a web app at a wrong URL answers 200 too
            message = (
                f"the AI API at {self.api_url} answered HTTP {reply.status} with "
                f"{reply.content_type or 'no content type'}, not JSON: is it the AI API's "
                "URL, ending in /v2?"
            )
            return self.error(502, "api_error", message, group)
        log.info("the AI API answered HTTP %d%s", reply.status, suffix)
        message = f"the AI API answered HTTP {reply.status}{suffix}"
        if not is_json:
            return self.error(502, "api_error", message, group)
        return self.error(
            reply.status, self.scrub(_upstream_code(reply.body), token), message, group
        )
