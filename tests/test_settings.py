"""Settings: precedence of flags, METRICRELAY_*, AICORE_* and the service key; errors; secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from metricrelay.errors import ConfigError
from metricrelay.relay.auth import auth_mode
from metricrelay.settings import RECLAIM_SLACK_S, Settings, redact_url

SECRET = "s3cr3t-client-secret"
TOKEN = "fixed-bearer-token-value"
API = "https://api.ai.example.com/v2"
AUTH = "https://tenant.authentication.example.com/oauth/token"
OAUTH_ENV = {
    "METRICRELAY_API_URL": API,
    "METRICRELAY_AUTH_URL": AUTH,
    "METRICRELAY_CLIENT_ID": "sb-client!b1",
    "METRICRELAY_CLIENT_SECRET": SECRET,
}


def build(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return Settings.from_sources(overrides, env=env or {})


def write_key(tmp_path: Path, data: object, name: str = "key.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def service_key(**changes: object) -> dict[str, object]:
    key: dict[str, object] = {
        "clientid": "key-client",
        "clientsecret": "key-secret",
        "url": "https://key-tenant.authentication.example.com",
        "identityzone": "key-tenant",
        "serviceurls": {"AI_API_URL": "https://api.key.example.com"},
        "appname": "key-app",
    }
    key.update(changes)
    return key


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    settings = build()
    assert settings.redis.redis_url == "redis://localhost:6379/0"
    assert settings.redis.prefix == "metricrelay"
    assert settings.api.resource_group == "default"
    assert (
        settings.api.api_url is None
        and settings.api.token is None
        and settings.observability.health_port is None
    )
    assert (settings.worker.read_count, settings.worker.block_ms, settings.worker.concurrency) == (
        1000,
        1000,
        16,
    )
    assert settings.redis.redis_timeout == 10.0  # above the longest blocking read (block_ms)
    assert settings.worker.max_body_bytes == 4 * 1024 * 1024
    assert settings.worker.memory_budget_bytes == 256 * 1024 * 1024
    assert (
        settings.worker.retry_base,
        settings.worker.retry_cap,
        settings.worker.retry_budget,
    ) == (0.5, 30.0, 300.0)
    assert settings.worker.retry_after_cap == 120.0 and settings.worker.max_deliveries == 5
    assert settings.api.request_timeout == 30.0 and settings.worker.linger == 0.5
    assert settings.worker.drain_deadline < 30.0  # below Kubernetes' default grace period
    assert settings.worker.consumer_name.endswith(f"-{os.getpid()}")


def test_values_are_parsed_from_strings() -> None:
    env = {
        "METRICRELAY_READ_COUNT": "50",
        "METRICRELAY_LINGER": "0.25",
        "METRICRELAY_HEALTH_PORT": "8081",
        "METRICRELAY_PREFIX": "team-a",
        "METRICRELAY_CONSUMER_NAME": "pod-7",
    }
    settings = build(env)
    assert (
        settings.worker.read_count,
        settings.worker.linger,
        settings.observability.health_port,
    ) == (50, 0.25, 8081)
    assert (settings.redis.prefix, settings.worker.consumer_name) == ("team-a", "pod-7")


def test_empty_variables_count_as_unset() -> None:
    settings = build({"METRICRELAY_RESOURCE_GROUP": "", "AICORE_RESOURCE_GROUP": "rg-1"})
    assert settings.api.resource_group == "rg-1"
    assert build({"METRICRELAY_HEALTH_PORT": ""}).observability.health_port is None


def test_an_explicit_env_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METRICRELAY_PREFIX", "from-os")
    assert Settings.from_sources(env={}).redis.prefix == "metricrelay"
    assert Settings.from_sources().redis.prefix == "from-os"
    assert Settings().redis.prefix == "from-os"  # read at construction, not at import


def test_settings_are_frozen() -> None:
    settings = build()
    with pytest.raises(ValidationError):
        settings.redis = settings.redis  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.redis.prefix = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- precedence


def test_metricrelay_variables_win_over_aicore_ones() -> None:
    env = {
        **OAUTH_ENV,
        "AICORE_BASE_URL": "https://api.other.example.com/v2",
        "AICORE_AUTH_URL": "https://other.example.com/oauth/token",
        "AICORE_CLIENT_ID": "aicore-client",
        "AICORE_CLIENT_SECRET": "aicore-secret",
        "METRICRELAY_RESOURCE_GROUP": "rg-mr",
        "AICORE_RESOURCE_GROUP": "rg-aicore",
    }
    settings = build(env)
    assert settings.api.api_url == API and settings.api.auth_url == AUTH
    assert settings.api.client_id == "sb-client!b1"
    assert settings.api.client_secret is not None
    assert settings.api.client_secret.get_secret_value() == SECRET
    assert settings.api.resource_group == "rg-mr"


def test_aicore_variables_are_fallbacks() -> None:
    env = {
        "AICORE_BASE_URL": API,
        "AICORE_AUTH_URL": AUTH,
        "AICORE_CLIENT_ID": "aicore-client",
        "AICORE_CLIENT_SECRET": SECRET,
        "AICORE_RESOURCE_GROUP": "rg-aicore",
        "AICORE_TRACKING_ENDPOINT": "http://tracking.local:8080",
        "AICORE_EXECUTION_ID": "e6663ea0593fe2b2",
    }
    settings = build(env)
    assert (settings.api.api_url, settings.api.auth_url, settings.api.client_id) == (
        API,
        AUTH,
        "aicore-client",
    )
    assert settings.api.resource_group == "rg-aicore"
    assert settings.api.tracking_endpoint == "http://tracking.local:8080"
    assert settings.api.execution_id == "e6663ea0593fe2b2"


def test_the_service_key_is_the_lowest_layer(tmp_path: Path) -> None:
    path = write_key(tmp_path, service_key())
    settings = build({"METRICRELAY_SERVICE_KEY": path})
    assert settings.api.client_id == "key-client"
    assert settings.api.client_secret is not None
    assert settings.api.client_secret.get_secret_value() == "key-secret"
    assert settings.api.auth_url == "https://key-tenant.authentication.example.com/oauth/token"
    assert settings.api.api_url == "https://api.key.example.com/v2"
    assert auth_mode(settings.api) == "oauth"

    layered = build(
        {"METRICRELAY_SERVICE_KEY": path, "AICORE_CLIENT_ID": "aicore", "AICORE_BASE_URL": API}
    )
    assert (layered.api.client_id, layered.api.api_url) == ("aicore", API)
    assert layered.api.auth_url == "https://key-tenant.authentication.example.com/oauth/token"
    top = build(
        {"METRICRELAY_SERVICE_KEY": path, "AICORE_CLIENT_ID": "a", "METRICRELAY_CLIENT_ID": "m"}
    )
    assert top.api.client_id == "m"


def test_command_line_overrides_win_over_everything(tmp_path: Path) -> None:
    path = write_key(tmp_path, service_key())
    settings = build(OAUTH_ENV, service_key=path, client_id="from-flag", read_count=7)
    assert settings.api.client_id == "from-flag"
    assert settings.worker.read_count == 7
    assert settings.api.api_url == API  # env still beats the key the flag pointed at
    only_key = build({}, service_key=path)
    assert only_key.api.client_id == "key-client"  # --service-key alone is enough


# --------------------------------------------------------------------------- URL suffixes


@pytest.mark.parametrize(
    ("url", "ai_api_url", "token_url", "api_url"),
    [
        ("https://a.example.com", "https://api.example.com", "/oauth/token", "/v2"),
        ("https://a.example.com/", "https://api.example.com/", "/oauth/token", "/v2"),
        ("https://a.example.com/oauth/token", "https://api.example.com/v2", "/oauth/token", "/v2"),
    ],
)
def test_service_key_urls_get_their_suffix_once(
    tmp_path: Path, url: str, ai_api_url: str, token_url: str, api_url: str
) -> None:
    path = write_key(tmp_path, service_key(url=url, serviceurls={"AI_API_URL": ai_api_url}))
    settings = build({"METRICRELAY_SERVICE_KEY": path})
    assert settings.api.auth_url == "https://a.example.com" + token_url
    assert settings.api.api_url == "https://api.example.com" + api_url


def test_a_bare_aicore_auth_url_gets_the_token_path() -> None:
    assert build({"AICORE_AUTH_URL": "https://t.example.com/"}).api.auth_url == (
        "https://t.example.com/oauth/token"
    )


def test_metricrelay_auth_url_is_taken_verbatim() -> None:
    assert build({"METRICRELAY_AUTH_URL": "http://127.0.0.1:9/token"}).api.auth_url == (
        "http://127.0.0.1:9/token"
    )


def test_a_trailing_slash_after_v2_is_dropped() -> None:
    assert build({"METRICRELAY_API_URL": API + "/"}).api.api_url == API


def test_a_wrapped_service_key_is_accepted(tmp_path: Path) -> None:
    path = write_key(tmp_path, {"credentials": service_key()})
    assert build({"METRICRELAY_SERVICE_KEY": path}).api.client_id == "key-client"


# --------------------------------------------------------------------------- errors


def config_error(env: dict[str, str] | None = None, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        build(env, **overrides)
    return str(caught.value)


def test_api_url_must_end_in_v2_and_the_message_names_the_variable() -> None:
    message = config_error({"METRICRELAY_API_URL": "https://api.example.com/v1"})
    assert message.startswith("METRICRELAY_API_URL: must end in /v2")
    assert "AICORE_BASE_URL: must end in /v2" in config_error(
        {"AICORE_BASE_URL": "https://api.example.com"}
    )
    assert "--api-url: must end in /v2" in config_error(api_url="https://api.example.com")


def test_every_problem_is_reported_at_once() -> None:
    message = config_error(
        {"METRICRELAY_READ_COUNT": "0", "METRICRELAY_LINGER": "soon", "METRICRELAY_BLOCK_MS": "x"}
    )
    assert "METRICRELAY_READ_COUNT: Input should be greater than or equal to 1" in message
    assert "METRICRELAY_LINGER:" in message and "METRICRELAY_BLOCK_MS:" in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"METRICRELAY_REDIS_URL": "http://x"}, "METRICRELAY_REDIS_URL: must be a redis://"),
        ({"METRICRELAY_PREFIX": "a b"}, "METRICRELAY_PREFIX: the key prefix must be non-empty"),
        ({"METRICRELAY_AUTH_URL": "tenant.example.com"}, "METRICRELAY_AUTH_URL: must be an http"),
        ({"METRICRELAY_LINGER": "nan"}, "METRICRELAY_LINGER: Input should be a finite number"),
        ({"METRICRELAY_RETRY_BUDGET": "inf"}, "METRICRELAY_RETRY_BUDGET: Input should be a finite"),
        ({"AICORE_EXECUTION_ID": "no"}, "AICORE_EXECUTION_ID: String should match pattern"),
        ({"METRICRELAY_RESOURCE_GROUP": "a b"}, "METRICRELAY_RESOURCE_GROUP: String should match"),
        ({"METRICRELAY_HEALTH_PORT": "70000"}, "METRICRELAY_HEALTH_PORT: Input should be less"),
        ({"METRICRELAY_RETRY_CAP": "0.1"}, "METRICRELAY_RETRY_CAP (0.1) must not be below"),
        ({"METRICRELAY_MEMORY_BUDGET_BYTES": "2048"}, "MEMORY_BUDGET_BYTES must be at least"),
    ],
)
def test_config_errors_are_readable(env: dict[str, str], expected: str) -> None:
    assert expected in config_error(env)


def test_unknown_overrides_are_refused() -> None:
    assert "--no-such-thing: unknown setting" in config_error(no_such_thing=1)


def test_a_bad_value_from_the_service_key_names_the_key_field(tmp_path: Path) -> None:
    path = write_key(tmp_path, service_key(url="not a url"))
    message = config_error({"METRICRELAY_SERVICE_KEY": path})
    assert f"url of service key {path}: must be an http" in message


def test_redis_passwords_are_not_echoed() -> None:
    message = config_error({"METRICRELAY_REDIS_URL": "redix://:hunter2@db:6379"})
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it"),
        ('{"clientsecret": "key-secret", ', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"clientid": 5}', "clientid must be a string"),
    ],
)
def test_broken_service_keys(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    message = config_error({"METRICRELAY_SERVICE_KEY": str(path)})
    assert expected in message and str(path) in message
    assert "key-secret" not in message


# --------------------------------------------------------------------------- auth mode


def test_auth_mode_oauth_token_and_none() -> None:
    assert auth_mode(build(OAUTH_ENV).api) == "oauth"
    assert auth_mode(build({"METRICRELAY_API_URL": API, "METRICRELAY_TOKEN": TOKEN}).api) == "token"
    # a fixed token wins over client credentials
    assert auth_mode(build({**OAUTH_ENV, "METRICRELAY_TOKEN": TOKEN}).api) == "token"
    in_cluster = {"AICORE_TRACKING_ENDPOINT": "http://t:80", "AICORE_EXECUTION_ID": "exec-1"}
    assert auth_mode(build(in_cluster).api) == "none"
    # as in SAP's SDK, inside an execution the tracking endpoint wins
    assert auth_mode(build({**OAUTH_ENV, **in_cluster}).api) == "none"


def test_auth_mode_names_the_missing_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        auth_mode(build({"METRICRELAY_API_URL": API, "AICORE_CLIENT_SECRET": SECRET}).api)
    message = str(caught.value)
    assert "METRICRELAY_CLIENT_ID (or AICORE_CLIENT_ID)" in message
    assert "METRICRELAY_AUTH_URL (or AICORE_AUTH_URL)" in message
    assert "METRICRELAY_TOKEN" in message
    assert "CLIENT_SECRET" not in message  # it is there, so not named as missing
    assert SECRET not in message


def test_auth_mode_without_any_endpoint() -> None:
    with pytest.raises(ConfigError, match="no metrics endpoint: set METRICRELAY_API_URL"):
        auth_mode(build({"METRICRELAY_TOKEN": TOKEN}).api)


def test_in_cluster_mode_needs_the_execution_id() -> None:
    with pytest.raises(ConfigError, match=r"METRICRELAY_EXECUTION_ID \(or AICORE_EXECUTION_ID\)"):
        auth_mode(build({"AICORE_TRACKING_ENDPOINT": "http://t:80"}).api)


# --------------------------------------------------------------------------- secrets


def test_secrets_never_appear_in_repr_str_or_dumps(tmp_path: Path) -> None:
    env = {
        **OAUTH_ENV,
        "METRICRELAY_TOKEN": TOKEN,
        "METRICRELAY_REDIS_URL": "redis://:redis-pass@db:6379/0",
    }
    settings = build(env)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text and TOKEN not in text and "redis-pass" not in text
    assert settings.api.token is not None and settings.api.token.get_secret_value() == TOKEN


# --------------------------------------------------------------------------- derived


def test_reclaim_idle_ms_is_derived_from_the_batch_lifetime() -> None:
    settings = build()
    assert settings.reclaim_idle_ms == int((0.5 + 300 + 2 * 30 + RECLAIM_SLACK_S) * 1000)
    tuned = build(
        {
            "METRICRELAY_LINGER": "1",
            "METRICRELAY_RETRY_BUDGET": "10",
            "METRICRELAY_REQUEST_TIMEOUT": "2.5",
        }
    )
    assert tuned.reclaim_idle_ms == int((1 + 10 + 5 + RECLAIM_SLACK_S) * 1000)
    assert (
        tuned.reclaim_idle_ms
        > (tuned.worker.linger + tuned.worker.retry_budget + tuned.api.request_timeout) * 1000
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@db:6379/0", "redis://user:**********@db:6379/0"),
        ("rediss://:pw@db/1", "rediss://:**********@db/1"),
        ("redis://db:6379/0", "redis://db:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert build({"METRICRELAY_REDIS_URL": url}).model_dump()["redis"]["redis_url"] == shown
    assert build({"METRICRELAY_REDIS_URL": url}).redis.redis_url == url  # the real value is kept


# --------------------------------------------------------------------------- the ingest's token


def test_the_ingest_token_is_a_secret_read_from_its_variable() -> None:
    assert build().api.ingest_token is None
    assert build({"METRICRELAY_INGEST_TOKEN": ""}).api.ingest_token is None  # empty is unset
    settings = build({"METRICRELAY_INGEST_TOKEN": TOKEN})
    assert settings.api.ingest_token is not None
    assert settings.api.ingest_token.get_secret_value() == TOKEN
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in text


# --------------------------------------------------------------------------- the Emitter's spool


def test_the_spool_settings_default_and_come_from_their_variables() -> None:
    emitter = build().emitter
    assert (emitter.spool_dir, emitter.spool_max_bytes, emitter.spool_fsync) == (
        None,
        1024 * 1024 * 1024,
        "batch",
    )
    env = {
        "METRICRELAY_SPOOL_DIR": "/var/spool/mr",
        "METRICRELAY_SPOOL_MAX_BYTES": "0",
        "METRICRELAY_SPOOL_FSYNC": "always",
    }
    tuned = build(env).emitter
    assert (tuned.spool_dir, tuned.spool_max_bytes, tuned.spool_fsync) == (
        "/var/spool/mr",
        0,
        "always",
    )
    assert build(env, spool_fsync="never").emitter.spool_fsync == "never"  # flags win


@pytest.mark.parametrize(
    ("name", "value"), [("SPOOL_FSYNC", "sometimes"), ("SPOOL_MAX_BYTES", "-1")]
)
def test_a_bad_spool_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"METRICRELAY_{name}"):
        build({f"METRICRELAY_{name}": value})
