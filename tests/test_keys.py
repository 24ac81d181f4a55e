"""Redis key names: derived from the prefix, the consumer group fixed, bad parts refused."""

from __future__ import annotations

import dataclasses

import pytest

from metricrelay.keys import CONSUMER_GROUP, Keys


def test_default_prefix_gives_the_contract_names() -> None:
    keys = Keys()
    assert keys.events == "metricrelay:events"
    assert keys.dead == "metricrelay:dead"
    assert keys.group == "metricrelay"
    assert keys.progress("default", "exec-1") == "metricrelay:progress:default:exec-1"


def test_a_prefix_moves_every_key_but_not_the_group() -> None:
    keys = Keys("team-a")
    assert keys.events == "team-a:events"
    assert keys.dead == "team-a:dead"
    assert keys.progress("rg", "e6663ea0593fe2b2") == "team-a:progress:rg:e6663ea0593fe2b2"
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
    rest = key.removeprefix("p:progress:")
    group, _, execution = rest.rpartition(":")
    assert (group, execution) == ("odd:group", "exec-1")


def test_keys_are_frozen_and_hashable() -> None:
    keys = Keys("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.prefix = "q"  # type: ignore[misc]
    assert {keys, Keys("p")} == {Keys("p")}
