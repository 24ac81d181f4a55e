"""metricrelay's settings: METRICRELAY_* variables, SAP's AICORE_* fall-backs, a service key file.

Precedence, highest first: command-line overrides, ``METRICRELAY_<FIELD>``, the ``AICORE_*``
fall-back of the field, the AI Core service key file, the default. An empty variable counts as
unset. The CLI builds :class:`Settings` once with :meth:`Settings.from_sources` and passes it down.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from redis.connection import parse_url

from metricrelay.connection import CLUSTER_SCHEMES, DEFAULT_TIMEOUT, startup_nodes
from metricrelay.errors import ConfigError
from metricrelay.keys import DEFAULT_PREFIX, MAX_SHARDS, Keys, parse_shard_list
from metricrelay.models import EXECUTION_ID_PATTERN, RESOURCE_GROUP_PATTERN

__all__ = [
    "BLOCK_MARGIN_S",
    "ENV_FALLBACKS",
    "ENV_PREFIX",
    "FIELDS",
    "GROUPS",
    "RECLAIM_SLACK_S",
    "ApiSettings",
    "EmitterSettings",
    "ObservabilitySettings",
    "RedisSettings",
    "Settings",
    "ShardingSettings",
    "WorkerSettings",
    "env_names",
    "redact_url",
]

ENV_PREFIX: Final = "METRICRELAY_"
# The variables SAP's SDK reads (CONTRACT.md §1), read when METRICRELAY_<FIELD> is unset.
ENV_FALLBACKS: Final[Mapping[str, str]] = {
    "api_url": "AICORE_BASE_URL",
    "auth_url": "AICORE_AUTH_URL",
    "client_id": "AICORE_CLIENT_ID",
    "client_secret": "AICORE_CLIENT_SECRET",
    "resource_group": "AICORE_RESOURCE_GROUP",
    "tracking_endpoint": "AICORE_TRACKING_ENDPOINT",
    "execution_id": "AICORE_EXECUTION_ID",
}
TOKEN_SUFFIX: Final = "/oauth/token"
API_SUFFIX: Final = "/v2"
MIB: Final = 1024 * 1024
# Added to the longest life of a batch before another worker may reclaim its entries: event-loop
# scheduling and a token fetch on the happy path. Redis measures idle time on its own clock, so
# clock skew between replicas does not enter.
RECLAIM_SLACK_S: Final = 5.0
# How much longer than the longest blocking read (block_ms) a Redis reply may take before the
# client gives up on it: a blocked XREADGROUP answers only when its block ends, and the network
# and a busy Redis add to that. Less, and every idle read would time out.
BLOCK_MARGIN_S: Final = 1.0


def env_names(field_name: str) -> str:
    """The variable(s) a field is read from, for messages: ``METRICRELAY_X (or AICORE_Y)``."""
    name = ENV_PREFIX + field_name.upper()
    fallback = ENV_FALLBACKS.get(field_name)
    return f"{name} (or {fallback})" if fallback else name


def _with_suffix(url: str, suffix: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(suffix) else url + suffix


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- sources


@dataclass
class _Build:
    """What one :meth:`Settings.from_sources` call reads from, and where each value came from."""

    env: Mapping[str, str]
    origins: dict[str, str] = field(default_factory=dict)


# Set only while from_sources() builds an instance, so that tests can pass an env dict; a plain
# Settings() reads os.environ — at construction time, never at import time.
_BUILD: ContextVar[_Build | None] = ContextVar("metricrelay_settings_build", default=None)


def _service_key_values(path: str) -> dict[str, tuple[str, str]]:
    """field → (value, origin) from an AI Core service key JSON file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"service key {path}: cannot read it ({exc.strerror})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # no parser detail: it could quote a piece of the client secret
        raise ConfigError(f"service key {path}: not valid JSON") from None
    if isinstance(data, dict) and isinstance(data.get("credentials"), dict):
        data = data["credentials"]  # `cf service-key` output of newer CLIs wraps the key
    if not isinstance(data, dict):
        raise ConfigError(f"service key {path}: not a JSON object")
    urls = data.get("serviceurls")
    found = {
        "client_id": ("clientid", data.get("clientid")),
        "client_secret": ("clientsecret", data.get("clientsecret")),
        "auth_url": ("url", data.get("url")),
        "api_url": (
            "serviceurls.AI_API_URL",
            urls.get("AI_API_URL") if isinstance(urls, dict) else None,
        ),
    }
    values: dict[str, tuple[str, str]] = {}
    for name, (key, value) in found.items():
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ConfigError(f"service key {path}: {key} must be a string")
        suffix = {"auth_url": TOKEN_SUFFIX, "api_url": API_SUFFIX}.get(name)
        values[name] = (
            _with_suffix(value, suffix) if suffix else value,
            f"{key} of service key {path}",
        )
    return values


def _layered(
    env: Mapping[str, str], fields: Iterable[str], key_path: object
) -> dict[str, tuple[str, str]]:
    """field → (raw value, origin), every layer below the command line applied in order."""
    path = (
        key_path if isinstance(key_path, str) and key_path else env.get("METRICRELAY_SERVICE_KEY")
    )
    layered = _service_key_values(path) if path else {}
    for name, variable in ENV_FALLBACKS.items():
        if value := env.get(variable):
            if name == "auth_url":  # SAP's SDK also appends it to a bare auth host
                value = _with_suffix(value, TOKEN_SUFFIX)
            layered[name] = (value, variable)
    for name in fields:
        variable = ENV_PREFIX + name.upper()
        if value := env.get(variable):
            layered[name] = (value, variable)
    return layered


class _LayeredSource(PydanticBaseSettingsSource):
    """METRICRELAY_* over AICORE_* over the service key file, from one environment mapping."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ resolves every field at once, because layers depend on each other
        # (the service key path decides what the lowest layer holds).
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        build = _BUILD.get()
        env = os.environ if build is None else build.env
        # current_state holds the command-line values, so --service-key is honoured here
        layered = _layered(env, FIELDS, self.current_state.get("service_key"))
        if build is not None:
            build.origins.update({name: origin for name, (_, origin) in layered.items()})
        return {name: value for name, (value, _) in layered.items()}


def _describe(
    error: ValidationError, overrides: Mapping[str, object], origins: dict[str, str]
) -> str:
    """One phrase per problem, joined by "; ", each naming the variable, flag or file behind it."""
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        loc = [str(part) for part in problem["loc"]]
        if loc and loc[0] in GROUPS:  # a setting of a sub-model, or the sub-model's own check
            loc = loc[1:]
        name = loc[0] if loc else ""
        if name in overrides:
            label = "--" + name.replace("_", "-")
        elif name in FIELDS:
            label = origins.get(name, ENV_PREFIX + name.upper())
        else:
            label = name
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting"
        problems.append(f"{label}: {message}" if label else message)
    return "; ".join(problems)


# --------------------------------------------------------------------------- the settings


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced, for logs and dumps. Read from the
    text itself, up to the last ``@``: a password holding ``/``, ``?`` or ``#`` unescaped
    hides from a URL parser, which then finds no user info at all."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:**********@{host}"


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class RedisSettings(BaseModel):
    """Where the streams are and how to talk to Redis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The URL may carry a Redis password: it stays out of repr() and is redacted in dumps.
    redis_url: str = Field("redis://localhost:6379/0", repr=False)
    cluster: bool = False  # a Redis Cluster even without a redis+cluster:// URL
    # Seconds to connect to Redis and to wait for any reply; above block_ms (Settings._coherent).
    redis_timeout: float = Field(DEFAULT_TIMEOUT, gt=0)
    prefix: str = DEFAULT_PREFIX

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ValueError(
                "must be a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL"
            )
        # the messages never repeat the URL: it may hold a password
        readable = "@" not in value.partition("://")[2] or "@" in parts.netloc
        try:
            if readable:  # as redis-py will read it (its parse_url is untyped)
                node = startup_nodes(value)[0] if parts.scheme in CLUSTER_SCHEMES else value
                parse_url(node)  # type: ignore[no-untyped-call]
        except ValueError:
            readable = False
        if not readable:
            raise ValueError(
                "is not a Redis URL that can be read (check the port and the database number; "
                "a password holding / ? # @ or % must be percent-encoded, e.g. / as %2F)"
            )
        return value

    @field_serializer("redis_url")
    def _redis_url_redacted(self, value: str) -> str:
        return redact_url(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        Keys(value)  # the one place that knows what a key prefix may be
        return value


class ShardingSettings(BaseModel):
    """How many event streams there are, which ones this process may own, and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: int = Field(1, ge=1, le=MAX_SHARDS)  # event streams; keys.py names them
    # Only these shards, e.g. "0-15,32": for very large shard counts, split among worker pools.
    only_shards: str | None = None
    # While changing the shard count: the old count, whose streams are drained first (README).
    drain_shards: int | None = Field(None, ge=1, le=MAX_SHARDS)
    lease_ttl: float = Field(10.0, ge=1)  # seconds a shard stays owned by a worker that went quiet

    @model_validator(mode="after")
    def _shard_layout(self) -> ShardingSettings:
        if self.only_shards is not None:
            parse_shard_list(self.only_shards, self.shards)  # raises ValueError naming it
        if self.drain_shards == self.shards:
            raise ValueError(
                "METRICRELAY_DRAIN_SHARDS must differ from METRICRELAY_SHARDS: it names the old "
                "shard count while changing it"
            )
        return self


class ApiSettings(BaseModel):
    """The AI API: where, with which credentials, for which resource group and execution."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    api_url: str | None = None
    auth_url: str | None = None
    client_id: str | None = Field(None, min_length=1)
    client_secret: SecretStr | None = None
    service_key: str | None = None
    token: SecretStr | None = None
    # The bearer token every request to `metricrelay ingest` must carry (None: not checked).
    ingest_token: SecretStr | None = None
    resource_group: str = Field("default", pattern=RESOURCE_GROUP_PATTERN)
    tracking_endpoint: str | None = None
    execution_id: str | None = Field(None, pattern=EXECUTION_ID_PATTERN)
    request_timeout: float = Field(30.0, gt=0)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _check_http_url(value)
        if not value.endswith(API_SUFFIX):
            raise ValueError(f"must end in {API_SUFFIX}, e.g. https://api.ai.<region>.../v2")
        return value

    @field_validator("auth_url", "tracking_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)


class WorkerSettings(BaseModel):
    """How the worker reads, batches, sends, retries and stops."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    consumer_name: str = Field(default_factory=_default_consumer_name, min_length=1)
    read_count: int = Field(1000, ge=1)
    block_ms: int = Field(1000, ge=1)  # 0 would block forever in XREADGROUP
    linger: float = Field(0.5, ge=0)
    max_body_bytes: int = Field(4 * MIB, ge=1024)
    concurrency: int = Field(16, ge=1)
    retry_base: float = Field(0.5, gt=0)
    retry_cap: float = Field(30.0, gt=0)
    retry_budget: float = Field(300.0, ge=0)
    retry_after_cap: float = Field(120.0, ge=0)
    max_deliveries: int = Field(5, ge=1)
    memory_budget_bytes: int = Field(256 * MIB, ge=1)
    drain_deadline: float = Field(25.0, gt=0)  # below Kubernetes' default 30 s grace period
    trim_interval: float = Field(60.0, gt=0)
    # Bodies in flight: adapted to the API's answers (relay/concurrency.py), at most concurrency.
    adaptive_concurrency: bool = True
    # A body waiting for a slot takes in its execution's bodies queued behind it (filling.py);
    # one that can still grow waits at most fill_wait seconds behind full ones.
    fill_queued_bodies: bool = True
    fill_wait: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _coherent(self) -> WorkerSettings:
        if self.retry_cap < self.retry_base:
            raise ValueError(
                f"METRICRELAY_RETRY_CAP ({self.retry_cap}) must not be below "
                f"METRICRELAY_RETRY_BASE ({self.retry_base})"
            )
        if self.memory_budget_bytes < self.max_body_bytes:
            raise ValueError(
                "METRICRELAY_MEMORY_BUDGET_BYTES must be at least METRICRELAY_MAX_BODY_BYTES, "
                "or not even one body fits"
            )
        return self


class ObservabilitySettings(BaseModel):
    """The worker's metrics and probes endpoint, and its look for streams nobody reads."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    health_port: int | None = Field(None, ge=0, le=65535)  # /metrics, /healthz, /readyz; 0: any
    # All interfaces by default: kubelet probes and Prometheus reach a pod on its own address.
    health_host: str = Field("0.0.0.0", min_length=1)
    ready_api_failure_seconds: float = Field(60.0, gt=0)  # /readyz fails past this API outage
    # How often a worker with a health port looks for streams nobody reads (a SCAN); 0: never.
    stray_interval: float = Field(60.0, ge=0)


class EmitterSettings(BaseModel):
    """How the Emitter in training code buffers and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    flush_interval: float = Field(0.2, gt=0)  # seconds between the writer's batches
    max_buffer_bytes: int = Field(64 * MIB, ge=1)
    # When the buffer is full: wait up to block_timeout (then BufferFull), or drop the point.
    buffer_policy: Literal["block", "drop"] = "block"
    block_timeout: float = Field(30.0, ge=0)
    on_error: Literal["raise", "warn"] = "raise"  # a bad point at the call: raise, or log it
    # Issue 18: where fragments wait on local disk while Redis is away. None: the per-user
    # cache ($XDG_CACHE_HOME or ~/.cache)/metricrelay/spool, resolved by producer/spool.py.
    spool_dir: str | None = None
    # Past this many bytes on disk the buffer policy applies again; 0 turns the spool off.
    spool_max_bytes: int = Field(1024 * MIB, ge=0)
    # fsync each record, each batch written (as Redis's appendfsync everysec), or never.
    spool_fsync: Literal["always", "batch", "never"] = "batch"


# Each sub-model of Settings, by its name there.
GROUPS: Final[Mapping[str, type[BaseModel]]] = {
    "redis": RedisSettings,
    "sharding": ShardingSettings,
    "api": ApiSettings,
    "worker": WorkerSettings,
    "observability": ObservabilitySettings,
    "emitter": EmitterSettings,
}
# The one table of settings: each one's name (METRICRELAY_<NAME>, the flag --<name>) and the
# sub-model that holds it.
FIELDS: Final[Mapping[str, str]] = {
    name: group for group, model in GROUPS.items() for name in model.model_fields
}


class Settings(BaseSettings):
    """Everything metricrelay is told, in sub-models; secrets are :class:`SecretStr` and never
    printed. Each setting has one name (:data:`FIELDS`): ``METRICRELAY_<NAME>``, the flag
    ``--<name>`` where there is one, and ``settings.<group>.<name>``.

    Build it with :meth:`from_sources`, which turns validation errors into :class:`ConfigError`;
    a plain ``Settings(**values)`` (values by setting name) reads the same sources but raises
    pydantic's ValidationError.
    """

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    sharding: ShardingSettings = Field(default_factory=ShardingSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    emitter: EmitterSettings = Field(default_factory=EmitterSettings)

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, values: Any) -> Any:
        """Settings given by name (flags, variables, keyword arguments) into their sub-models;
        an unknown name stays where it is, for pydantic to refuse."""
        if not isinstance(values, dict):
            return values
        grouped: dict[str, Any] = {}
        for name, value in values.items():
            group = FIELDS.get(name)
            if group is None:
                grouped[name] = value
            else:
                grouped.setdefault(group, {})[name] = value
        return grouped

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir sources: containers pass the environment, and one layered
        # source keeps the METRICRELAY_* / AICORE_* / service key precedence in one place.
        return init_settings, _LayeredSource(settings_cls)

    @classmethod
    def from_sources(
        cls,
        cli_overrides: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build the settings from flags (highest), ``env`` (default ``os.environ``) and files.

        Raises :class:`ConfigError` naming the variable, flag or file behind each bad value.
        """
        overrides: dict[str, Any] = dict(cli_overrides or {})
        build = _Build(os.environ if env is None else env)
        token = _BUILD.set(build)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, overrides, build.origins)) from None
        finally:
            _BUILD.reset(token)

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.redis.redis_timeout <= self.worker.block_ms / 1000 + BLOCK_MARGIN_S:
            raise ValueError(
                f"METRICRELAY_REDIS_TIMEOUT ({self.redis.redis_timeout:g} s) must exceed "
                f"METRICRELAY_BLOCK_MS ({self.worker.block_ms} ms) by more than "
                f"{BLOCK_MARGIN_S:g} s, or a read blocked that long times out before Redis answers"
            )
        return self

    def keys(self) -> Keys:
        return Keys(self.redis.prefix, self.sharding.shards)

    def owned_shards(self) -> list[int]:
        """The shards of the current layout this worker may work on (all unless told)."""
        sharding = self.sharding
        if sharding.only_shards is None:
            return list(range(sharding.shards))
        return parse_shard_list(sharding.only_shards, sharding.shards)

    @property
    def reclaim_idle_ms(self) -> int:
        """How long an entry may stay pending before another worker reclaims it.

        The longest a batch lives: ``linger`` in the coalescer, then attempts that start within
        ``retry_budget``; the last attempt can be two PATCHes (a 401 gets a fresh token and one
        more try), each bounded by ``request_timeout``; plus :data:`RECLAIM_SLACK_S`.
        """
        worker, timeout = self.worker, self.api.request_timeout
        seconds = worker.linger + worker.retry_budget + 2 * timeout + RECLAIM_SLACK_S
        return math.ceil(seconds * 1000)

    @property
    def handover_idle_ms(self) -> int:
        """How long entries a shard's previous owner left pending stay untouched before its new
        owner takes them over: the lease expired, and the previous owner stopped working on the
        shard before that (fleet.py); a request it had started ends within ``request_timeout``.
        Never more than :attr:`reclaim_idle_ms`."""
        seconds = self.sharding.lease_ttl + self.api.request_timeout + RECLAIM_SLACK_S
        return min(self.reclaim_idle_ms, math.ceil(seconds * 1000))
