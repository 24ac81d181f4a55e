"""Redis key names: derived from the prefix, the consumer group fixed, bad parts refused."""

from __future__ import annotations

import dataclasses

import pytest

from metricrelay.keys import (
    CONSUMER_GROUP,
    Keys,
    any_layout_match,
    format_shard_list,
    parse_shard_list,
    stream_kind,
)


def test_default_prefix_gives_the_contract_names() -> None:
    keys = Keys()
    assert keys.events == "metricrelay:events"
    assert keys.dead == "metricrelay:dead"
    assert keys.group == "metricrelay"
    # internal, beside the stream's slot: the tag is the stream's whole name (keys.py)
    assert (
        keys.progress("default", "exec-1")
        == "metricrelay:progress:{metricrelay:events}:default:exec-1"
    )


def test_a_prefix_moves_every_key_but_not_the_group() -> None:
    keys = Keys("team-a")
    assert keys.events == "team-a:events"
    assert keys.dead == "team-a:dead"
    assert keys.progress("rg", "e6663ea0593fe2b2") == (
        "team-a:progress:{team-a:events}:rg:e6663ea0593fe2b2"
    )
    assert keys.group == CONSUMER_GROUP == "metricrelay"


@pytest.mark.parametrize("prefix", ["", " ", "a b", "tab\there", "nl\n"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys(prefix)


@pytest.mark.parametrize(("group", "execution"), [("", "exec-1"), ("rg", ""), ("r g", "exec-1")])
def test_bad_progress_parts_are_refused(group: str, execution: str) -> None:
    with pytest.raises(ValueError):
        Keys().progress(group, execution)


def test_progress_key_splits_back_at_the_last_colon() -> None:
    key = Keys("p").progress("odd:group", "exec-1")
    rest = key.removeprefix("p:progress:{p:events}:")
    group, _, execution = rest.rpartition(":")
    assert (group, execution) == ("odd:group", "exec-1")


def test_keys_are_frozen_and_hashable() -> None:
    keys = Keys("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.prefix = "q"  # type: ignore[misc]
    assert {keys, Keys("p")} == {Keys("p")}


def test_shards_have_hash_tagged_names_that_carry_the_shard_count() -> None:
    keys = Keys("p", 4)
    shard = keys.shard(1)
    assert shard.events == "p:events:{1of4}"
    assert shard.dead == "p:dead:{1of4}"
    assert shard.lease == "p:lease:{1of4}"
    assert shard.progress("rg", "exec-1") == "p:progress:{1of4}:rg:exec-1"
    assert [s.name for s in keys.all_shards()] == ["0of4", "1of4", "2of4", "3of4"]
    # a different count is a different layout: no stream is shared while N changes
    assert not {s.events for s in Keys("p", 2).all_shards()} & {s.events for s in keys.all_shards()}


def _slot(key: str) -> int:
    """Redis Cluster's slot of a key: CRC16/XMODEM of the hash tag (or the key) mod 16384."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_every_key_of_a_shard_shares_the_stream_slot(shards: int) -> None:
    for shard in Keys("metricrelay", shards).all_shards():
        slot = _slot(shard.events)
        assert _slot(shard.progress("default", "exec-1")) == slot
        if shards > 1:
            assert _slot(shard.dead) == _slot(shard.lease) == slot


def test_routing_is_the_documented_crc32_and_stable() -> None:
    keys = Keys("p", 8)
    # the README's worked example: CRC-32 of "default:e6663ea0593fe2b2" is 1067546060
    assert keys.route("default", "e6663ea0593fe2b2").index == 1067546060 % 8 == 4
    assert Keys("p", 1).route("default", "anything").events == "p:events"
    counts = [0] * 8
    for n in range(4000):
        counts[keys.route("default", f"exec-{n}").index] += 1
    assert min(counts) > 400  # spread: every shard gets a fair part of 4000 executions


def test_sharded_keys_refuse_the_single_stream_names() -> None:
    with pytest.raises(ValueError, match="4 shards"):
        _ = Keys("p", 4).events


@pytest.mark.parametrize("bad", ["{p}", "a}b"])
def test_braces_in_the_prefix_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        Keys(bad)


def test_shard_lists() -> None:
    assert parse_shard_list("0-3, 7,2", 8) == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="outside"):
        parse_shard_list("6-8", 8)
    with pytest.raises(ValueError, match="N-M"):
        parse_shard_list("x", 8)


def test_shard_lists_have_one_spelling() -> None:
    assert format_shard_list([7, 0, 1, 2, 3, 3, 9, 10]) == "0-3,7,9-10"
    assert parse_shard_list(format_shard_list([5, 1, 2]), 8) == [1, 2, 5]


def test_worker_registries_and_the_stream_globs_of_a_layout() -> None:
    assert Keys("p").workers_of() == Keys("p").workers == "p:workers"
    assert Keys("p", 8).workers_of("0-3,7") == "p:workers:0-3,7"
    assert (Keys("p").events_match, Keys("p").dead_match) == ("p:events", "p:dead")
    assert (Keys("p", 4).events_match, Keys("p", 4).dead_match) == (
        "p:events:{*of4}",
        "p:dead:{*of4}",
    )


def test_stray_streams_are_found_by_a_glob_and_told_by_name() -> None:
    assert any_layout_match("p", "events") == "p:events*"
    assert any_layout_match("a*b[1]", "dead") == "a\\*b\\[1\\]:dead*"  # the prefix is literal
    for layout in (Keys("p"), Keys("p", 3)):
        for shard in layout.all_shards():
            assert (stream_kind("p", shard.events), stream_kind("p", shard.dead)) == (
                "events",
                "dead",
            )
    for other in ("p:events-old", "p:events:{1of}", "q:events", "p:lease:{1of4}", "pp:dead"):
        assert stream_kind("p", other) is None
