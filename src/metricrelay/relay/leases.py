"""Which worker owns which shard: a lease per shard, renewed while its owner lives.

A shard has one owner at a time, so an execution (which lives in one shard) is delivered by one
worker and keeps its order across batches. The lease is a key in the shard's slot holding the
owner's consumer name with a time to live (SET NX PX); the owner renews it, a worker that stops
releases it, and a crashed worker's lease expires. Workers also beat in a sorted set so that each
knows how many share the shards and takes only its share: ``ceil(shards / workers)``.
"""

from __future__ import annotations

import math
from typing import Any, Final

from metricrelay.keys import Keys, ShardKeys
from metricrelay.replies import as_text

__all__ = ["Leases", "release_key", "renew_key"]

# Compare-and-set scripts: only the owner renews or deletes a lease.
_RENEW: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# A beat scored by Redis's clock, not the worker's: a worker whose host clock runs ahead and
# crashes would otherwise stay "alive" that much longer, and the others would leave its share
# of the shards unowned.
_BEAT: Final = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now, ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('zcard', KEYS[1])
"""
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


async def renew_key(redis: Any, key: str, me: str, ttl_ms: int) -> bool:
    """Extend ``key``'s time to live if it still holds ``me``; False when it does not."""
    return bool(await redis.eval(_RENEW, 1, key, me, ttl_ms))


async def release_key(redis: Any, key: str, me: str) -> None:
    """Delete ``key`` if it still holds ``me`` (never another holder's)."""
    await redis.eval(_RELEASE, 1, key, me)


class Leases:
    """Lease operations of one worker (``me``) on the shards of one layout or more."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        me: str,
        ttl: float,
        *,
        pool: str = "",
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.me = me
        # Workers limited to some shards (only_shards) count only the workers of their own pool.
        self.registry = keys.workers_of(pool)
        self.ttl_ms = max(1000, int(ttl * 1000))

    async def beat(self) -> int:
        """Say this worker is alive; how many workers are (this one included)."""
        return max(1, int(await self.redis.eval(_BEAT, 1, self.registry, self.me, self.ttl_ms)))

    async def leave(self) -> None:
        await self.redis.zrem(self.registry, self.me)

    @staticmethod
    def share(shards: int, workers: int) -> int:
        """How many shards one of ``workers`` should own."""
        return math.ceil(shards / max(1, workers)) if shards else 0

    async def acquire(self, shard: ShardKeys) -> bool:
        return bool(await self.redis.set(shard.lease, self.me, nx=True, px=self.ttl_ms))

    async def renew(self, shard: ShardKeys) -> bool:
        """False when the lease is no longer this worker's (it expired, another took it)."""
        return await renew_key(self.redis, shard.lease, self.me, self.ttl_ms)

    async def release(self, shard: ShardKeys) -> None:
        await release_key(self.redis, shard.lease, self.me)

    async def owner(self, shard: ShardKeys) -> str | None:
        owner = await self.redis.get(shard.lease)
        return None if owner is None else as_text(owner)
