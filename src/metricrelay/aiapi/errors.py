"""Every refusal of the reference server, rendered in the one AI API error-body shape.

SAP documents two codes for the metrics API (``02000005`` PayloadLimitException, ``02010055``
not found). For the other refusals it documents none, so this server uses codes of its own,
``020004xx``/``020005xx`` after the HTTP status, in the same shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

import orjson
from aiohttp import web

from metricrelay.models import error_body

__all__ = [
    "CODE_NOT_FOUND",
    "CODE_PAYLOAD_LIMIT",
    "ApiError",
    "bad_request",
    "error_middleware",
    "not_found",
    "payload_too_large",
    "render",
    "target_of",
    "unauthorized",
]

log = logging.getLogger(__name__)

CODE_PAYLOAD_LIMIT: Final = "02000005"
CODE_NOT_FOUND: Final = "02010055"
PAYLOAD_LIMIT_MESSAGE: Final = "PayloadLimitException"
NOT_FOUND_MESSAGE: Final = "Metrics was not found."
# details beyond these add bulk, not insight
MAX_DETAILS: Final = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_code(status: int) -> str:
    """This server's own code for a status SAP documents no code for."""
    return f"02000{status:03d}"


class ApiError(Exception):
    """A refusal: status, code, message, optional extra details and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or status_code(status)
        self.message = message
        self.details = tuple(details)
        self.headers = dict(headers or {})
        self.close = close  # the body was left unread: don't keep the connection


def bad_request(message: str, details: Iterable[str] = ()) -> ApiError:
    return ApiError(400, message, details=details)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="metricrelay"'})


def payload_too_large(reason: str, *, close: bool = False) -> ApiError:
    """413 with SAP's body; the broken limit is added as a second detail."""
    return ApiError(
        413, PAYLOAD_LIMIT_MESSAGE, code=CODE_PAYLOAD_LIMIT, details=(reason,), close=close
    )


def not_found() -> ApiError:
    return ApiError(404, NOT_FOUND_MESSAGE, code=CODE_NOT_FOUND)


def target_of(path: str) -> str:
    """``/v2/lm/metrics`` and ``/api/v1/metrics`` → ``/metrics``, as the API names its target."""
    for prefix in ("/v2/lm", "/api/v1"):
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


def render(error: ApiError, path: str) -> web.Response:
    """The error as a JSON response; ``details[0]`` repeats code and message as the API does."""
    body = error_body(
        error.code, error.message, request_id=uuid.uuid4().hex, target=target_of(path)
    )
    extra = error.details[:MAX_DETAILS]
    body["error"]["details"].extend({"code": error.code, "message": text} for text in extra)
    response = web.Response(
        status=error.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=error.headers,
    )
    if error.close:
        response.force_close()
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals, router misses and crashes into error bodies; nothing else has an ``error``."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = render(exc, request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = render(ApiError(exc.status, exc.reason, headers=headers), request.path)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = render(ApiError(500, "Internal Server Error"), request.path)
    return response
