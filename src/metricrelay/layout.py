"""The shard layouts an operator command looks at: the current one, and the old one while draining.

While an operator changes ``METRICRELAY_SHARDS``, ``METRICRELAY_DRAIN_SHARDS`` names the old
count: its streams still hold entries and dead letters, so every command reads them too. The
current layout comes first, then the old one.
"""

from __future__ import annotations

from metricrelay.keys import Keys, ShardKeys
from metricrelay.settings import Settings

__all__ = ["dead_pattern", "events_pattern", "layouts", "shards_in_play", "streams_in_play"]


def layouts(settings: Settings) -> list[Keys]:
    """The current layout, then the draining one when ``drain_shards`` is set."""
    current = Keys(settings.redis.prefix, settings.sharding.shards)
    if settings.sharding.drain_shards is None:
        return [current]
    return [current, Keys(settings.redis.prefix, settings.sharding.drain_shards)]


def shards_in_play(settings: Settings) -> list[ShardKeys]:
    """Every shard of every layout in play, current layout first, each in index order."""
    return [shard for layout in layouts(settings) for shard in layout.all_shards()]


def streams_in_play(settings: Settings) -> list[str]:
    """The event and dead-letter stream names of every shard in play (none of them is stray)."""
    return [name for shard in shards_in_play(settings) for name in (shard.events, shard.dead)]


def events_pattern(keys: list[Keys]) -> str:
    """The event stream key with one stream; a ``SCAN MATCH`` pattern per layout otherwise."""
    return ", ".join(layout.events_match for layout in keys)


def dead_pattern(keys: list[Keys]) -> str:
    """As :func:`events_pattern`, for the dead-letter streams."""
    return ", ".join(layout.dead_match for layout in keys)
