"""The ingest's bearer token: every request carries it, or is refused with 401 before routing.

The refusal speaks the caller's protocol: MLflow's error body on MLflow's paths (the client
raises ``UNAUTHENTICATED: …``), the AI API's everywhere else (SAP's SDK parses only that).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from metricrelay.aiapi.errors import Handler, render, unauthorized
from metricrelay.producer.mlflow_errors import MlflowError, is_mlflow_path, mlflow_response

__all__ = ["is_loopback", "token_middleware", "warn_if_exposed"]

log = logging.getLogger(__name__)

_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="metricrelay"'}
_MISSING: Final = (
    "this ingest requires Authorization: Bearer <METRICRELAY_INGEST_TOKEN> "
    "(MLflow clients: set MLFLOW_TRACKING_TOKEN)"
)


def token_middleware(token: str | None) -> Middleware:
    """A middleware that lets a request through only with ``Authorization: Bearer <token>``;
    with ``token`` None, every request goes through."""
    expected = None if token is None else f"Bearer {token}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None:
            return await handler(request)
        # surrogatepass: a header byte that is not UTF-8 arrives as a lone surrogate
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        # compare_digest takes as long whatever prefix matches: the token cannot be guessed
        # byte by byte from the answer's timing.
        if hmac.compare_digest(given, expected):
            return await handler(request)
        message = "wrong bearer token" if given else "missing bearer token"
        message = f"{message}: {_MISSING}"
        if is_mlflow_path(request.path):
            response = mlflow_response(MlflowError("UNAUTHENTICATED", message), dict(_CHALLENGE))
        else:
            response = render(unauthorized(message), request.path)
        response.force_close()  # the body was left unread: this connection cannot be reused
        return response

    return check_token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) binds the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # "", a host name, or several: assume it is reachable from outside
        return False


def warn_if_exposed(host: str, token: str | None) -> bool:
    """Log a warning when the ingest listens beyond loopback with no token; True if it did."""
    if token is not None or is_loopback(host):
        return False
    log.warning(
        "ingest listens on %s, beyond loopback, without a token: anyone who reaches it can "
        "write metrics to any execution; set METRICRELAY_INGEST_TOKEN",
        host or "all interfaces",
    )
    return True
