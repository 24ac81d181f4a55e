"""One configuration (issue 15): the worker's and the Emitter's configuration derive from
Settings, whose sub-models hold every default once; each setting has one name."""

from __future__ import annotations

import dataclasses

import pytest

from metricrelay.producer.emitter import EmitterConfig
from metricrelay.relay.config import WorkerConfig, concurrency_config, worker_config
from metricrelay.settings import FIELDS, GROUPS, Settings


def test_the_worker_config_has_no_defaults_of_its_own() -> None:
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(WorkerConfig))
    config = worker_config(Settings.from_sources(env={}))
    # the defaults are the settings' (trim_interval was 10 s here and 60 s there)
    assert (config.trim_interval, config.read_count, config.drain_deadline) == (60.0, 1000, 25.0)
    tuned = worker_config(
        Settings.from_sources(env={"METRICRELAY_TRIM_INTERVAL": "7", "AICORE_RESOURCE_GROUP": "rg"})
    )
    assert (tuned.trim_interval, tuned.default_resource_group) == (7.0, "rg")


def test_the_emitter_reads_the_environment_through_the_settings_table() -> None:
    env = {
        "AICORE_EXECUTION_ID": "exec-1",
        "METRICRELAY_SHARDS": "4",
        "METRICRELAY_FLUSH_INTERVAL": "0.5",
        "METRICRELAY_BUFFER_POLICY": "drop",
        "METRICRELAY_REDIS_TIMEOUT": "3",
    }
    config = EmitterConfig(env=env)
    assert (config.execution_id, config.flush_interval, config.policy) == ("exec-1", 0.5, "drop")
    assert config.redis_timeout == 3.0
    assert config.keys.count == 4  # the execution's shard of four
    assert EmitterConfig("given", policy="block", env=env).policy == "block"  # arguments win
    defaults = Settings.from_sources(env={}).emitter
    plain = EmitterConfig("exec-2", env={})
    assert (plain.max_buffer_bytes, plain.block_timeout) == (
        defaults.max_buffer_bytes,
        defaults.block_timeout,
    )


def test_a_bad_emitter_variable_or_argument_is_named() -> None:
    with pytest.raises(ValueError, match="METRICRELAY_FLUSH_INTERVAL"):
        EmitterConfig("exec-2", env={"METRICRELAY_FLUSH_INTERVAL": "soon"})
    with pytest.raises(ValueError, match=r"^execution_id: String should match"):
        EmitterConfig("x", env={})  # the API's pattern: 4 to 64 of [A-Za-z0-9_.-]
    with pytest.raises(ValueError, match=r"^policy: "):
        EmitterConfig("exec-2", policy="maybe", env={})  # type: ignore[arg-type]


def test_every_setting_has_one_name_in_one_sub_model() -> None:
    names = [name for model in GROUPS.values() for name in model.model_fields]
    assert len(names) == len(set(names)) == len(FIELDS)
    settings = Settings(read_count=5, prefix="p")  # by name, into their sub-models
    assert (settings.worker.read_count, settings.redis.prefix) == (5, "p")


def test_the_concurrency_config_comes_from_the_worker_settings() -> None:
    default = concurrency_config(Settings.from_sources(env={}))
    assert (default.adaptive, default.fill_queued, default.fill_wait) == (True, True, 5.0)
    env = {
        "METRICRELAY_ADAPTIVE_CONCURRENCY": "false",
        "METRICRELAY_FILL_QUEUED_BODIES": "0",
        "METRICRELAY_FILL_WAIT": "2.5",
    }
    tuned = concurrency_config(Settings.from_sources(env=env))
    assert (tuned.adaptive, tuned.fill_queued, tuned.fill_wait) == (False, False, 2.5)
