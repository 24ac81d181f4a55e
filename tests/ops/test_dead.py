"""`metricrelay dead list|show|purge`: filters, full view, and purge only with confirmation."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import orjson
import pytest
import redis
from tests.support.dead_letters import KEYS, add_dead, fragment, letter

from metricrelay.deadletter import DeadLetter, Reason
from metricrelay.devtools.embedded import RedisServer

pytestmark = pytest.mark.integration


class _Terminal(io.StringIO):
    """Standard input that claims to be a terminal, with the operator's answer typed in."""

    buffer = io.BytesIO()  # `metricrelay validate` takes stdin's buffer as its default file

    def isatty(self) -> bool:
        return True


def _fill(client: redis.Redis) -> None:
    exhausted = DeadLetter(
        fragment("run-a", 2), Reason.EXHAUSTED, "503 Service Unavailable", ["7-0", "8-0"],
        status=503, attempts=9, failed_at="1970-01-01T00:00:01.000000Z",
    )  # fmt: skip
    add_dead(client, exhausted, "1000-0")
    add_dead(client, letter(fragment("run-b"), Reason.REJECTED), "2000-0")
    add_dead(client, letter(b"\xffjunk", Reason.INVALID), "3000-0")


def _ids(client: redis.Redis) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(KEYS.dead)]


def test_list_json_and_filters(sync_redis: redis.Redis, cli: Any) -> None:
    _fill(sync_redis)
    code, out, _ = cli("dead list", "--json")
    assert code == 0
    listed = orjson.loads(out)
    assert [row["id"] for row in listed] == ["1000-0", "2000-0", "3000-0"]
    assert listed[0] == {
        "id": "1000-0",
        "failed_at": "1970-01-01T00:00:01.000000Z",
        "reason": "exhausted",
        "status": 503,
        "attempts": 9,
        "resource_group": "default",
        "execution_id": "run-a",
        "items": {"metrics": 2, "tags": 0, "customInfo": 0},
        "resource_bytes": len(fragment("run-a", 2)),
        "source_ids": ["7-0", "8-0"],
        "error": "503 Service Unavailable",
    }
    assert "resource" not in listed[0]  # a list stays small; `show` has the bytes

    def ids(*args: str) -> list[str]:
        return [row["id"] for row in orjson.loads(cli("dead list", "--json", *args)[1])]

    assert ids("--reason", "rejected", "--reason", "invalid") == ["2000-0", "3000-0"]
    assert ids("--execution", "run-b") == ["2000-0"]
    assert ids("--since", "1970-01-01T00:00:02Z") == ["2000-0", "3000-0"]
    assert ids("--until", "2000-0") == ["1000-0", "2000-0"]
    assert ids("--limit", "1") == ["1000-0"]


def test_list_table(sync_redis: redis.Redis, cli: Any) -> None:
    _fill(sync_redis)
    code, out, err = cli("dead list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "FAILED", "AT", "REASON", "STATUS", "EXECUTION", "ITEMS", "ERROR",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["1000-0", "1970-01-01T00:00:01.000000Z", "exhausted", "503",
                                    "run-a", "2"]  # fmt: skip
    assert "3 dead letter(s)" in err


def test_show_one_in_full(sync_redis: redis.Redis, cli: Any) -> None:
    _fill(sync_redis)
    code, out, _ = cli("dead show", "1000-0")
    assert code == 0
    assert "reason:         exhausted" in out
    assert "source ids:     7-0, 8-0" in out
    assert '"executionId": "run-a"' in out  # the resource, pretty-printed
    code, out, _ = cli("dead show", "3000-0", "--json")
    shown = orjson.loads(out)
    assert (shown["resource_is_json"], shown["resource"]) == (False, "\ufffdjunk")
    code, _, err = cli("dead show", "9999-0")
    assert code == 1
    assert "no dead letter 9999-0" in err
    assert cli("dead show", "not-an-id")[0] == 1


def test_purge_refuses_without_a_terminal(
    sync_redis: redis.Redis, redis_server: RedisServer
) -> None:
    _fill(sync_redis)
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "dead", "purge", "--redis-url", redis_server.url],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "standard input is not a terminal (pass --yes)" in done.stderr
    assert _ids(sync_redis) == ["1000-0", "2000-0", "3000-0"]


def test_purge_asks_on_a_terminal(
    sync_redis: redis.Redis, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(sync_redis)
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    code, _, err = cli("dead purge", "--reason", "invalid")
    assert code == 1
    assert "nothing deleted" in err
    assert _ids(sync_redis) == ["1000-0", "2000-0", "3000-0"]
    monkeypatch.setattr(sys, "stdin", _Terminal("yes\n"))
    code, out, _ = cli("dead purge", "--reason", "invalid")
    assert code == 0
    assert "deleted 1 dead letter(s)" in out
    assert _ids(sync_redis) == ["1000-0", "2000-0"]


def test_purge_with_yes_and_filters(sync_redis: redis.Redis, cli: Any) -> None:
    _fill(sync_redis)
    code, out, _ = cli("dead purge", "--yes", "--execution", "run-a")
    assert (code, out.strip()) == (0, "deleted 1 dead letter(s) from metricrelay:dead")
    assert _ids(sync_redis) == ["2000-0", "3000-0"]
    code, _, err = cli("dead purge", "--yes", "--execution", "run-a")
    assert code == 0
    assert "nothing to purge" in err


def test_letters_other_tools_wrote_are_skipped_not_fatal(sync_redis: redis.Redis, cli: Any) -> None:
    _fill(sync_redis)
    sync_redis.xadd(KEYS.dead, {"resource": b"{}", "reason": b"mystery"}, id="4000-0")
    code, out, _ = cli("dead list", "--json")
    assert code == 0
    assert [row["id"] for row in orjson.loads(out)] == ["1000-0", "2000-0", "3000-0"]
    code, _, err = cli("dead show", "4000-0")
    assert code == 1
    assert "4000-0 is unreadable" in err
    code, out, _ = cli("status", "--json")
    assert orjson.loads(out)["dead"]["by_reason"]["mystery"] == 1  # counted as it is


def test_purge_waits_for_no_replay(sync_redis: redis.Redis, cli: Any) -> None:
    """A purge during a replay could delete letters the replay has just appended."""
    _fill(sync_redis)
    holder = "replay on ops-laptop pid 4242 since 2026-11-24T01:00:00.000000Z"
    sync_redis.set(KEYS.replay_lock, holder, px=30_000)
    code, _, err = cli("dead purge", "--yes", "--execution", "run-a")
    assert code == 1
    assert holder in err and "nothing deleted" in err
    assert _ids(sync_redis) == ["1000-0", "2000-0", "3000-0"]
    sync_redis.delete(KEYS.replay_lock)
    code, _, _ = cli("dead purge", "--yes", "--execution", "run-a")
    assert code == 0 and _ids(sync_redis) == ["2000-0", "3000-0"]
    assert sync_redis.get(KEYS.replay_lock) is None  # released
