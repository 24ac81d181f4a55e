"""``metricrelay api`` as a program: flags, a free port, SIGTERM, a --db file across restarts."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from metricrelay.cli import build_parser
from metricrelay.commands.api import config_from_args, run

STARTUP_S = 30.0
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class Output:
    """The program's stderr, read by a thread; ``wait_for`` polls it with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._queue.put(ln) for ln in stream], daemon=True).start()

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        for line in self.lines:
            if match := pattern.search(line):
                return match
        while True:  # each get() waits on the program's output, at most STARTUP_S
            self.lines.append(self._queue.get(timeout=STARTUP_S))
            if match := pattern.search(self.lines[-1]):
                return match


@contextmanager
def program(*flags: str) -> Iterator[tuple[str, Output]]:
    """Run ``metricrelay api --port 0 FLAGS``; yield its URL and its stderr; SIGTERM it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "metricrelay", "api", "--port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process.stderr)
    try:
        yield output.wait_for(LISTENING).group(1), output
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            process.kill()  # ours, by its own handle
            raise
    assert code == 0
    output.wait_for(re.compile("metricrelay api stopped"))


def token(url: str) -> dict[str, str]:
    reply = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "me", "client_secret": "pw"},
        timeout=10,
    )
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['access_token']}", "AI-Resource-Group": "rg"}


@pytest.mark.integration  # the program serves HTTP on a loopback port
def test_program_serves_and_keeps_a_db_file_across_restarts(tmp_path) -> None:
    db = str(tmp_path / "api.db")
    flags = ("--db", db, "--client-id", "me", "--client-secret", "pw")
    body = {
        "executionId": "exec-0001",
        "metrics": [{"name": "loss", "value": 0.5, "step": 1, "timestamp": "2026-11-23T12:00:00Z"}],
    }
    with program(*flags) as (url, _):
        headers = token(url)
        reply = requests.patch(f"{url}/v2/lm/metrics", json=body, headers=headers, timeout=10)
        assert reply.status_code == 204
    with program(*flags) as (url, _):
        found = requests.get(
            f"{url}/v2/lm/metrics",
            params={"executionIds": "exec-0001"},
            headers=token(url),
            timeout=10,
        ).json()
    assert found["count"] == 1
    assert found["resources"][0]["metrics"] == [
        {
            "name": "loss",
            "value": 0.5,
            "timestamp": "2026-11-23T12:00:00.000000Z",
            "step": 1,
            "labels": [],
        }
    ]


@pytest.mark.integration  # the program serves HTTP on a loopback port
def test_program_logs_its_fault_settings(tmp_path) -> None:
    with program("--fail-rate", "0.25", "--seed", "9") as (url, output):
        assert requests.get(f"{url}/_stats", timeout=10).json()["seed"] == 9
        line = output.wait_for(re.compile("fault injection.*")).group(0)
    assert "fail 0.250" in line
    assert "seed 9" in line


def test_flags_map_onto_the_config() -> None:
    args = build_parser().parse_args(
        [
            "api",
            "--host", "127.0.0.2",
            "--port", "0",
            "--db", "x.db",
            "--max-body-bytes", "1024",
            "--expires-in", "60",
            "--client-id", "id",
            "--client-secret", "secret",
            "--token", "fixed",
            "--fail-rate", "0.1",
            "--throttle-rate", "0.2",
            "--retry-after", "3",
            "--reset-rate", "0.3",
            "--reset-when", "after",
            "--latency-ms", "5",
            "--max-metrics-per-request", "50",
            "--reject-names", "^debug",
            "--seed", "7",
            "--fault-methods", "patch,get",
            "--tracking-resource-group", "tenant",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.host, config.port, config.db, config.max_body_bytes) == (
        "127.0.0.2",
        0,
        "x.db",
        1024,
    )
    assert (config.token_expires_in, config.client_id, config.client_secret) == (60, "id", "secret")
    assert (config.static_token, config.tracking_resource_group) == ("fixed", "tenant")
    faults = config.faults
    assert (faults.fail_rate, faults.throttle_rate, faults.reset_rate) == (0.1, 0.2, 0.3)
    assert (faults.retry_after_s, faults.reset_when, faults.latency_ms) == (3, "after", 5.0)
    assert faults.max_metrics_per_request == 50
    assert faults.reject_names is not None and faults.reject_names.pattern == "^debug"
    assert (faults.seed, faults.methods) == (7, frozenset({"PATCH", "GET"}))


def test_defaults() -> None:
    config = config_from_args(build_parser().parse_args(["api"]))
    assert (config.host, config.port, config.db) == ("127.0.0.1", 8080, ":memory:")
    assert config.max_body_bytes == 8 * 1024 * 1024
    assert config.token_expires_in == 43199
    assert not config.faults.any_random and config.faults.methods == {"PATCH"}


@pytest.mark.parametrize(
    "flags",
    [["--fail-rate", "1.5"], ["--reject-names", "("], ["--port", "-1"], ["--reset-when", "never"]],
)
def test_bad_flags_are_usage_errors(flags, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["api", *flags])
    assert raised.value.code == 2


def test_client_id_without_secret_is_refused(capsys) -> None:
    assert run(build_parser().parse_args(["api", "--client-id", "only-id"])) == 2
    assert "client_id and client_secret go together" in capsys.readouterr().err


def test_an_address_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(build_parser().parse_args(["api", "--port", str(port)])) == 1
