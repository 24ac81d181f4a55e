"""Replay: filters, dry run, crash between append and delete, re-split, still-invalid stays
dead, one replay at a time."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as redis_asyncio
from tests.support.dead_letters import KEYS, add_dead, fragment, letter
from tests.support.waiting import until

from metricrelay.codec import decode_entry
from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.ops.dead import DeadFilter, parse_bound
from metricrelay.ops.replay import ReplayPlan, ReplaySummary, replay
from metricrelay.ops.replay_lock import ReplayBusy, ReplayLock, ReplayLockLost
from metricrelay.relay.batching import Limits
from metricrelay.timestamps import from_epoch_ms

pytestmark = pytest.mark.integration

NOW = "2026-11-23T12:00:00.000000Z"


class Crash(Exception):
    """Stands for the process dying at the injected point."""


async def _replay(client: Any, **options: Any) -> ReplaySummary:
    flt = options.pop("flt", DeadFilter())
    options.setdefault("limits", Limits())
    return await replay(
        client, KEYS, flt, default_resource_group="default", failed_at=NOW, **options
    )


async def _add(client: Any, dead: DeadLetter, entry_id: str) -> str:
    await client.xadd(KEYS.dead, dead.fields(), id=entry_id)
    return entry_id


async def _events(client: Any) -> list[dict[str, Any]]:
    rows = await client.xrange(KEYS.events)
    return [orjson.loads(fields[b"resource"]) for _, fields in rows]


async def _dead_ids(client: Any) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await client.xrange(KEYS.dead)]


async def _three(client: Any) -> None:
    """Letters at seconds 1, 2, 3: exhausted run-a, rejected run-b, exhausted run-b."""
    await _add(client, letter(fragment("run-a", 2), Reason.EXHAUSTED), "1000-0")
    await _add(client, letter(fragment("run-b", 1), Reason.REJECTED), "2000-0")
    await _add(client, letter(fragment("run-b", 3), Reason.EXHAUSTED), "3000-0")


@pytest.mark.parametrize(
    ("flt", "moved", "left"),
    [
        (DeadFilter(), ["1000-0", "2000-0", "3000-0"], []),
        (DeadFilter(reasons=frozenset({Reason.EXHAUSTED})), ["1000-0", "3000-0"], ["2000-0"]),
        (
            DeadFilter(reasons=frozenset({Reason.EXHAUSTED, Reason.REJECTED})),
            ["1000-0", "2000-0", "3000-0"],
            [],
        ),
        (DeadFilter(execution="run-b"), ["2000-0", "3000-0"], ["1000-0"]),
        (DeadFilter(start="2000-0"), ["2000-0", "3000-0"], ["1000-0"]),
        (DeadFilter(end=parse_bound("2000", upper=True)), ["1000-0", "2000-0"], ["3000-0"]),
        (
            DeadFilter(
                start=parse_bound("1970-01-01T00:00:01.500Z", upper=False),
                end=parse_bound("1970-01-01T02:00:02+02:00", upper=True),
            ),
            ["2000-0"],
            ["1000-0", "3000-0"],
        ),
        (DeadFilter(limit=2), ["1000-0", "2000-0"], ["3000-0"]),
        (DeadFilter(execution="run-b", limit=1), ["2000-0"], ["1000-0", "3000-0"]),
    ],
)
async def test_filters_select_what_moves(
    redis_client: redis_asyncio.Redis,
    flt: DeadFilter,
    moved: list[str],
    left: list[str],
) -> None:
    await _three(redis_client)
    points = {"1000-0": 2, "2000-0": 1, "3000-0": 3}
    summary = await _replay(redis_client, flt=flt)
    assert (summary.matched, summary.moved, summary.redead) == (len(moved), len(moved), 0)
    assert await _dead_ids(redis_client) == left
    events = await _events(redis_client)
    assert [len(e["metrics"]) for e in events] == [points[i] for i in moved]


async def test_dry_run_moves_nothing(redis_client: redis_asyncio.Redis) -> None:
    await _three(redis_client)
    await _add(redis_client, letter(b"not json", Reason.POISON), "4000-0")
    before = await redis_client.xrange(KEYS.dead)
    seen: list[ReplayPlan] = []
    summary = await _replay(redis_client, dry_run=True, on_plan=seen.append)
    assert await redis_client.xrange(KEYS.dead) == before
    assert await redis_client.xlen(KEYS.events) == 0
    assert (summary.dry_run, summary.moved, summary.fragments, summary.redead) == (
        True, 4, 3, 1,
    )  # fmt: skip
    assert [len(plan.fragments) for plan in seen] == [1, 1, 1, 0]
    assert seen[3].still_dead[0].reason is Reason.INVALID  # poison bytes that are not JSON
    real = await _replay(redis_client)
    assert real.as_json() | {"dry_run": True} == summary.as_json()  # the dry run told the truth


async def test_a_crash_between_append_and_delete_loses_nothing(
    redis_client: redis_asyncio.Redis,
) -> None:
    await _three(redis_client)
    appended: list[str] = []

    def crash_on_second(plan: ReplayPlan) -> None:
        appended.append(plan.record.id)
        if len(appended) == 2:
            raise Crash

    with pytest.raises(Crash):
        await _replay(redis_client, after_append=crash_on_second)
    # the second letter's replacement is in the event stream, and the letter is still dead
    assert await _dead_ids(redis_client) == ["2000-0", "3000-0"]
    assert [len(e["metrics"]) for e in await _events(redis_client)] == [2, 1]
    summary = await _replay(redis_client)  # the operator runs it again
    assert summary.moved == 2
    assert await _dead_ids(redis_client) == []
    events = await _events(redis_client)
    # every letter arrived; only the one in hand at the crash (run-b, 1 point) twice
    assert [(e["executionId"], len(e["metrics"])) for e in events] == [
        ("run-a", 2), ("run-b", 1), ("run-b", 1), ("run-b", 3),
    ]  # fmt: skip


async def test_too_large_is_resplit_under_todays_limits(redis_client: redis_asyncio.Redis) -> None:
    body = fragment("run-big", 40)  # about 4 KB: too large for a 1 KiB budget
    await _add(redis_client, letter(body, Reason.TOO_LARGE), "1000-0")
    limits = Limits(max_body_bytes=1024, max_metrics=1000)
    summary = await _replay(redis_client, limits=limits)
    assert (summary.moved, summary.redead, summary.items) == (1, 0, 40)
    assert summary.fragments >= 4
    rows = await redis_client.xrange(KEYS.events)
    steps: list[int] = []
    for _, fields in rows:
        resource = fields[b"resource"]
        decoded = decode_entry(resource, entry_ms=0, default_resource_group="default")
        assert decoded.problems == []
        assert decoded.fragment is not None
        # what a PATCH of this fragment sends: the fragment less its resourceGroup
        patch = orjson.loads(resource)
        del patch["resourceGroup"]
        assert len(orjson.dumps(patch)) <= 1024
        steps += [m["step"] for m in patch["metrics"]]
    assert steps == list(range(40))  # nothing lost, nothing doubled, in order
    assert await _dead_ids(redis_client) == []


async def test_still_invalid_parts_stay_dead_and_oversized_ones_go_alone(
    redis_client: redis_asyncio.Redis,
) -> None:
    document = orjson.loads(fragment("run-a", 3))
    document["metrics"][1]["value"] = "not a number"
    resource = orjson.dumps(document)
    await _add(redis_client, letter(resource, Reason.REJECTED, sources=("5-1",)), "1-0")
    # an item over today's body budget even alone: no documented limit broken, so it is sent
    # alone again (the API decides: only its 413 to the item alone makes it too_large)
    huge = {"executionId": "run-h", "customInfo": [{"name": "blob", "value": "x" * 3000}]}
    await _add(redis_client, letter(orjson.dumps(huge), Reason.TOO_LARGE), "2-0")
    summary = await _replay(redis_client, limits=Limits(max_body_bytes=2048))
    assert (summary.moved, summary.fragments, summary.items, summary.redead) == (2, 2, 3, 1)
    event, blob = await _events(redis_client)
    assert [m["step"] for m in event["metrics"]] == [0, 2]
    assert blob["customInfo"] == huge["customInfo"]
    rows = await redis_client.xrange(KEYS.dead)
    assert [entry_id.decode() for entry_id, _ in rows] != ["1-0"]  # a new letter
    [first] = (DeadLetter.from_fields(fields) for _, fields in rows)
    assert first.reason is Reason.INVALID
    assert first.error.startswith("metrics[1].value: ")  # its place in the replayed letter
    assert "replay of dead letter 1-0, first dead as rejected" in first.error
    assert orjson.loads(first.resource)["metrics"][0]["value"] == "not a number"
    assert (list(first.source_ids), first.failed_at) == (["5-1"], NOW)


async def test_unchanged_invalid_letters_are_left_in_place(
    redis_client: redis_asyncio.Redis,
) -> None:
    await _add(redis_client, letter(b"\x00 not json", Reason.INVALID), "1-0")
    summary = await _replay(redis_client)
    assert (summary.matched, summary.unchanged, summary.moved) == (1, 1, 0)
    assert await _dead_ids(redis_client) == ["1-0"]


async def test_replayed_points_keep_their_original_time(redis_client: redis_asyncio.Redis) -> None:
    raw = b'{"executionId": "run-p", "metrics": [{"name": "loss", "value": 1}]}'
    poison = DeadLetter(raw, Reason.POISON, "delivered 6 times", ["1700000000123-0"])
    await _add(redis_client, poison, "1-0")
    await _replay(redis_client)
    [event] = await _events(redis_client)
    assert event["resourceGroup"] == "default"
    assert event["metrics"][0]["timestamp"] == from_epoch_ms(1_700_000_000_123)


async def test_letters_appended_during_the_scan_are_not_read_back(
    redis_client: redis_asyncio.Redis,
) -> None:
    document = orjson.loads(fragment("run-a", 2))
    document["metrics"][0]["value"] = True
    await _add(redis_client, letter(orjson.dumps(document), Reason.REJECTED), "1-0")
    summary = await _replay(redis_client)
    assert (summary.examined, summary.redead) == (1, 1)  # its new letter came after the end
    assert await redis_client.xlen(KEYS.dead) == 1


def test_command_dry_run_and_json(sync_redis: redis.Redis, cli: Any) -> None:
    add_dead(sync_redis, letter(fragment("run-a", 2), Reason.EXHAUSTED), "1000-0")
    add_dead(sync_redis, letter(b"junk", Reason.INVALID), "2000-0")
    code, out, _ = cli("replay", "--dry-run")
    assert code == 0
    assert "1000-0  exhausted  run-a  would append 1 fragment(s), 2 item(s)" in out
    assert "2000-0  invalid    -  stays dead, unchanged" in out
    assert "would move 1 (1 fragment(s), 2 item(s) to metricrelay:events)" in out
    assert sync_redis.xlen(KEYS.dead) == 2
    code, out, _ = cli("replay", "--json", "--reason", "exhausted")
    document = orjson.loads(out)
    assert document["summary"]["moved"] == 1
    assert document["letters"] == [
        {"id": "1000-0", "reason": "exhausted", "execution_id": "run-a", "action": "move",
         "fragments": 1, "items": 2, "still_dead": []},
    ]  # fmt: skip
    assert sync_redis.xlen(KEYS.events) == 1
    code, _, err = cli("replay", "--since", "yesterday")
    assert code == 1
    assert "neither a stream id" in err


# --------------------------------------------------------------------------- one replay at a time


def test_a_second_replay_is_refused_while_one_holds_the_lock(
    sync_redis: redis.Redis, cli: Any
) -> None:
    add_dead(sync_redis, letter(fragment("run-a", 2), Reason.EXHAUSTED), "1000-0")
    holder = "ops-laptop pid 4242 since 2026-11-24T01:00:00.000000Z"
    sync_redis.set(KEYS.replay_lock, holder, px=30_000)
    code, out, err = cli("replay")
    assert code == 1
    assert holder in err and "run one replay or purge at a time" in err
    assert (sync_redis.xlen(KEYS.dead), sync_redis.xlen(KEYS.events)) == (1, 0)
    code, out, _ = cli("replay", "--dry-run")  # looking needs no lock
    assert code == 0 and "would move 1" in out
    assert sync_redis.get(KEYS.replay_lock) == holder.encode()  # not touched by either
    sync_redis.delete(KEYS.replay_lock)  # that replay ended
    code, out, _ = cli("replay")
    assert code == 0 and "moved 1" in out
    assert sync_redis.xlen(KEYS.events) == 1
    assert sync_redis.get(KEYS.replay_lock) is None  # released when done


async def test_the_lock_is_held_while_replaying_and_released_after_a_crash(
    redis_client: redis_asyncio.Redis,
) -> None:
    await _three(redis_client)
    seen: list[bytes | None] = []

    def crash_on_second(plan: ReplayPlan) -> None:
        seen.append(None)
        if len(seen) == 2:
            raise Crash

    async with ReplayLock(redis_client, KEYS.replay_lock, holder="me") as lock:
        assert await redis_client.get(KEYS.replay_lock) == b"me"
        busy = r"being changed by me; its lock expires in \d+s unless renewed: run one replay"
        with pytest.raises(ReplayBusy, match=busy):
            async with ReplayLock(redis_client, KEYS.replay_lock, holder="other"):
                pass
        with pytest.raises(Crash):
            await _replay(redis_client, guard=lock.check, after_append=crash_on_second)
    assert await redis_client.get(KEYS.replay_lock) is None


async def test_a_replay_that_lost_its_lock_stops_before_its_next_change(
    redis_client: redis_asyncio.Redis,
) -> None:
    """Taken from it (deleted, here): the renewal notices and the replay stops."""
    await _three(redis_client)
    async with ReplayLock(redis_client, KEYS.replay_lock, holder="me", ttl=3) as lock:
        await _replay(redis_client, guard=lock.check, flt=DeadFilter(limit=1))
        await redis_client.set(KEYS.replay_lock, "someone else")
        await until(lambda: lock.lost, timeout=10)  # a renewal (every ttl/3) finds another holder
        with pytest.raises(ReplayLockLost):
            await _replay(redis_client, guard=lock.check)
    assert await _dead_ids(redis_client) == ["2000-0", "3000-0"]  # nothing more moved
    assert await redis_client.get(KEYS.replay_lock) == b"someone else"  # not released


async def test_a_replay_paused_past_its_lock_ttl_stops(redis_client: redis_asyncio.Redis) -> None:
    """Its renewals could not run (a paused process, Redis away): past the TTL the lock may be
    another's, so the next change is refused even before a renewal has told."""
    await _three(redis_client)
    now = [100.0]
    lock = ReplayLock(redis_client, KEYS.replay_lock, ttl=30, clock=lambda: now[0])

    def pause(plan: ReplayPlan) -> None:
        now[0] += 31

    async with lock:
        with pytest.raises(ReplayLockLost):
            await _replay(redis_client, guard=lock.check, on_plan=pause)
    assert await _dead_ids(redis_client) == ["2000-0", "3000-0"]


async def test_a_lock_that_cannot_be_released_is_left_to_expire(
    redis_client: redis_asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis gone when the replay ends: its work is done, so no error; the lock expires."""

    class ReleaseFails:
        def __getattr__(self, name: str) -> Any:
            return getattr(redis_client, name)

        async def eval(self, *args: Any) -> Any:
            raise redis.exceptions.ConnectionError("gone")

    async with ReplayLock(ReleaseFails(), KEYS.replay_lock, holder="me", ttl=5):
        pass
    assert 0 < await redis_client.pttl(KEYS.replay_lock) <= 5000
    assert "expires by itself" in caplog.text
