"""MLflow's error body (``{"error_code", "message"}``) and the statuses MLflow gives each code.

The MLflow client raises ``MlflowException("<CODE>: <message>")`` from this body, so a refusal
reads the same in the training log as one from an MLflow server. None of the statuses used here
is one the client retries (408/429/5xx but 501), except 503 for a Redis outage, which is meant
to be retried.
"""

from __future__ import annotations

import re
from typing import Final

import orjson
from aiohttp import web

__all__ = [
    "MLFLOW_PATH",
    "MlflowError",
    "endpoint_not_found",
    "invalid",
    "is_mlflow_path",
    "mlflow_response",
    "not_implemented",
]

# The tracking API (any version), MLflow's artifact proxy, and the UI's ajax twins of both.
MLFLOW_PATH: Final = re.compile(r"^/(?:ajax-)?api/\d+\.\d+/mlflow(?:-artifacts)?(?:/|$)")

_STATUS: Final = {
    "INVALID_PARAMETER_VALUE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "BAD_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
    "TEMPORARILY_UNAVAILABLE": 503,
}


def is_mlflow_path(path: str) -> bool:
    return MLFLOW_PATH.match(path) is not None


class MlflowError(Exception):
    """A refusal in MLflow's terms; the HTTP status follows from the code, as in MLflow."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message
        self.status = _STATUS[error_code]


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def not_implemented(message: str) -> MlflowError:
    return MlflowError("NOT_IMPLEMENTED", message)


def endpoint_not_found(method: str, path: str) -> MlflowError:
    return MlflowError(
        "ENDPOINT_NOT_FOUND",
        f"metricrelay ingest does not serve {method} {path}: it relays experiments, runs, "
        "metrics, params and tags to SAP AI Core's metrics API (no artifacts, models, "
        "traces, search or metric history)",
    )


def mlflow_response(error: MlflowError, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error_code": error.error_code, "message": error.message}
    return web.Response(
        status=error.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
