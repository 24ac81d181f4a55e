"""What every ingest handler shares: its configuration, its Redis client and the one XADD path.

Both the AI API routes (``producer/ingest.py``) and the MLflow routes
(``producer/mlflow_routes.py``) append through :func:`append_document`, so an MLflow point
and an SDK point become the same stream entry, routed to the same shard.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from metricrelay.connection import REDIS_UNAVAILABLE
from metricrelay.keys import Keys
from metricrelay.models import RESOURCE_GROUP_PATTERN

__all__ = [
    "CONFIG",
    "DEFAULT_MAX_BODY_BYTES",
    "REDIS",
    "IngestConfig",
    "QueueUnavailable",
    "append_document",
    "resource_group_of",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
GROUP: Final = re.compile(RESOURCE_GROUP_PATTERN)


class IngestConfig:
    def __init__(
        self,
        keys: Keys,
        default_resource_group: str = "default",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        *,
        token: str | None = None,
        execution_id: str | None = None,
        drop_non_finite: bool = False,
    ) -> None:
        self.keys = keys
        self.default_resource_group = default_resource_group
        self.max_body_bytes = max_body_bytes
        self.token = token  # every request must carry it as a bearer token (None: no check)
        self.execution_id = execution_id  # the MLflow run id runs/create hands out, when set
        # MLflow metrics that are NaN or infinite: dropped (logged once per run and name)
        # rather than refused with 400, which raises in the training loop
        self.drop_non_finite = drop_non_finite


class QueueUnavailable(Exception):
    """Redis did not take the entry: the caller answers 503, and the client may retry."""


REDIS: Final = web.AppKey("redis", Redis)
CONFIG: Final = web.AppKey("config", IngestConfig)


def resource_group_of(request: web.Request) -> str:
    """The ``AI-Resource-Group`` header when it is a valid id, else the ingest's default."""
    group = request.headers.get("AI-Resource-Group", "")
    return group if GROUP.match(group) else request.app[CONFIG].default_resource_group


async def append_document(app: web.Application, document: dict[str, Any], group: str) -> None:
    """XADD one fragment to its execution's shard, or raise :class:`QueueUnavailable`.

    The caller has validated ``document``: it carries a valid executionId, so it is routable.
    """
    config = app[CONFIG]
    document["resourceGroup"] = group
    stream = config.keys.route(group, document["executionId"]).events
    try:
        await app[REDIS].xadd(stream, {"resource": orjson.dumps(document)})
    except (RedisError, *REDIS_UNAVAILABLE) as exc:
        log.error("could not append to the stream: %s", exc)
        raise QueueUnavailable(str(exc)) from exc
