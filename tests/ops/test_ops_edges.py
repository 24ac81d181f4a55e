"""The operator tools at their edges: replay across a layout change keeps each execution's order,
ids mean one letter, a letter another tool wrote or a Redis URL that cannot be read is an error
message (never a traceback), and a password is never printed, however it is written."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import redis
from tests.support.dead_letters import KEYS, add_dead, fragment, letter

from metricrelay.cli import main
from metricrelay.deadletter import Reason
from metricrelay.devtools.embedded import free_port
from metricrelay.keys import Keys

FOUR = Keys(shards=4)
TWO = Keys(shards=2)


def _tagged(execution: str, stage: str, step: int) -> bytes:
    return orjson.dumps(
        {
            "resourceGroup": "default",
            "executionId": execution,
            "metrics": [
                {
                    "name": "loss",
                    "value": 1.0,
                    "step": step,
                    "timestamp": "2026-11-23T12:00:00.000000Z",
                },
            ],
            "tags": [{"name": "stage", "value": stage}],
        }
    )


# --------------------------------------------------------------------------- replay order


@pytest.mark.integration
def test_replay_with_a_drained_layout_keeps_each_executions_order(
    sync_redis: redis.Redis, cli: Any
) -> None:
    """README, "Changing N": replay with --shards/--drain-shards. An execution dead-lettered
    before the switch (old layout, step 0, tag "old") and after it (new layout, step 1, tag
    "new") comes back in that order — the draining layout's letters first — so the
    last-write-wins tag ends "new" (the current layout once went first)."""
    run = "run-order"
    old, new = TWO.route("default", run), FOUR.route("default", run)
    sync_redis.xadd(
        old.dead, letter(_tagged(run, "old", 0), Reason.EXHAUSTED).fields(), id="1000-0"
    )
    sync_redis.xadd(
        new.dead, letter(_tagged(run, "new", 1), Reason.EXHAUSTED).fields(), id="2000-0"
    )
    code, _, err = cli("replay", "--shards", "4", "--drain-shards", "2")
    assert code == 0, err
    events = [orjson.loads(fields[b"resource"]) for _, fields in sync_redis.xrange(new.events)]
    assert [(e["metrics"][0]["step"], e["tags"][0]["value"]) for e in events] == [
        (0, "old"),
        (1, "new"),
    ]


# --------------------------------------------------------------------------- dead purge / show


@pytest.mark.integration
def test_purge_by_id_of_an_unreadable_letter_gives_an_error_not_a_traceback(
    sync_redis: redis.Redis, cli: Any
) -> None:
    """`dead purge <id>` of a letter another tool wrote (an unknown reason) exits 1 with a
    message saying how to inspect and delete it, not a ValueError traceback."""
    add_dead(sync_redis, letter(fragment("run-a"), Reason.REJECTED), "1000-0")
    sync_redis.xadd(KEYS.dead, {"resource": b"{}", "reason": b"mystery"}, id="4000-0")
    code, _, err = cli("dead purge", "--yes", "4000-0")
    assert code == 1 and "4000-0" in err and "unreadable" in err and "XDEL" in err
    ids = [entry_id.decode() for entry_id, _ in sync_redis.xrange(KEYS.dead)]
    assert "1000-0" in ids  # a purge by id never touches another letter


@pytest.mark.integration
def test_an_id_without_sequence_shows_and_purges_the_same_letter(
    sync_redis: redis.Redis, cli: Any
) -> None:
    """``1000`` is ``1000-0`` for show and purge alike (XRANGE 1000 1000 once spanned the whole
    millisecond, so show named 1000-1, while purge's XDEL 1000 deleted nothing and exited 0)."""
    add_dead(sync_redis, letter(fragment("run-a"), Reason.REJECTED), "1000-1")
    code, _, err = cli("dead show", "1000")
    assert code == 1 and "no dead letter" in err
    code, _, err = cli("dead purge", "--yes", "1000")
    assert code == 1 and sync_redis.xlen(KEYS.dead) == 1, err
    add_dead(sync_redis, letter(fragment("run-b"), Reason.REJECTED), "2000-0")
    add_dead(sync_redis, letter(fragment("run-c"), Reason.REJECTED), "2000-1")
    code, out, _ = cli("dead show", "2000")
    assert code == 0 and "run-b" in out and "run-c" not in out
    code, _, err = cli("dead purge", "--yes", "2000")
    assert code == 0, err
    assert [i.decode() for i, _ in sync_redis.xrange(KEYS.dead)] == ["1000-1", "2000-1"]


# --------------------------------------------------------------------------- bad URLs


def _run(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    caplog.set_level(logging.INFO)
    capsys.readouterr()
    try:
        code = main(list(argv))
    except ValueError as exc:
        pytest.fail(f"{argv[0]} crashed with a traceback on a bad URL: {exc!r}")
    out, err = capsys.readouterr()
    assert code == 1, (code, out, err)
    return out + err + caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Sup3rSecret@127.0.0.1:notaport/0",
        # an unescaped '#' ends the netloc: urllib takes the password for the port, and
        # ValueError("Port could not be cast to integer value as 'Sup3rSecret'") is printed
        "redis://:Sup3rSecret#x@127.0.0.1:7/0",
    ],
)
@pytest.mark.parametrize("command", ["status", "replay", "dead list"])
def test_a_malformed_redis_url_is_an_error_not_a_traceback(
    command: str, url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL redis-py cannot read: exit 1 with a message (not a traceback), and the password
    in the URL printed nowhere."""
    text = _run(caplog, capsys, *command.split(), "--redis-url", url, "--timeout", "1")
    assert "Sup3rSecret" not in text


@pytest.mark.parametrize("command", ["status", "replay", "dead list"])
def test_a_password_with_a_slash_is_never_printed(
    command: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unescaped '/' in the password (base64 passwords have them) splits the URL before the
    '@', so a URL parser finds no password at all: such a URL is refused, and never printed
    with the secret in clear."""
    url = f"redis://:{free_port()}/Sup3rSecret@127.0.0.1:{free_port()}/0"
    text = _run(caplog, capsys, *command.split(), "--redis-url", url, "--timeout", "1")
    assert "Sup3rSecret" not in text
