"""``metricrelay view`` as a user runs it: a process pointed at a reference server with runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from tests.support.reference_api import CLIENT_ID, CLIENT_SECRET, config_of

from metricrelay.api.server import BackgroundServer

FIXED_TOKEN = "fixed-view-token-0123456789"
STEPS = 12
RANKS = (0, 1)
# run id → tags; run-empty has tags and customInfo but no metrics
RUNS: dict[str, dict[str, str]] = {
    "run-a": {"model": "mlp", "lr": "0.1"},
    "run-b": {"model": "cnn", "lr": "0.1"},
    "run-c": {"model": "cnn", "lr": "0.01"},
    "run-empty": {"model": "cnn", "lr": "0.5"},
}
START_S = 30.0


def _body(execution_id: str, tags: dict[str, str]) -> dict[str, Any]:
    scale = {"run-a": 1.0, "run-b": 2.0, "run-c": 3.0}.get(execution_id, 0.0)
    metrics = [
        {
            "name": name,
            "value": scale / (step + 1 + rank) if name == "loss" else step / (STEPS * (scale or 1)),
            "timestamp": f"2026-11-23T12:{step:02d}:{rank:02d}.000Z",
            "step": step,
            "labels": [{"name": "rank", "value": str(rank)}],
        }
        for name in ("accuracy", "loss")
        for rank in RANKS
        for step in range(STEPS)
    ]
    report = {"run": execution_id, "tags": len(tags)}
    return {
        "executionId": execution_id,
        "metrics": metrics if scale else [],
        "tags": [{"name": k, "value": v} for k, v in tags.items()],
        "customInfo": [{"name": "report", "value": orjson.dumps(report).decode()}],
    }


def _patch(server: BackgroundServer, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        server.base_url + "/lm/metrics",
        data=orjson.dumps(body),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {FIXED_TOKEN}",
            "AI-Resource-Group": "default",
            "Content-Type": "application/merge-patch+json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204


@pytest.fixture(scope="module")
def reference() -> Iterator[BackgroundServer]:
    """``metricrelay api`` restricted to one client (OAuth), also accepting a fixed token."""
    config, _ = config_of({"static_token": FIXED_TOKEN})
    with BackgroundServer(config) as server:
        for execution_id, tags in RUNS.items():
            _patch(server, _body(execution_id, tags))
        yield server


class TokenRecorder:
    """A token service in front of the reference server's that remembers every token it passes.

    The proxy fetches its tokens here, so a test knows exactly which tokens the page must never
    see, whatever form the reference server gives them."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tokens: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = urllib.request.Request(
                    recorder.upstream,
                    data=self.rfile.read(length),
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        status, body = reply.status, reply.read()
                except urllib.error.HTTPError as exc:
                    status, body = exc.code, exc.read()
                if status == 200:
                    recorder.tokens.append(orjson.loads(body)["access_token"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test output is not the place for access logs."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=START_S)


@pytest.fixture(scope="module")
def recorder(reference: BackgroundServer) -> Iterator[TokenRecorder]:
    tokens = TokenRecorder(reference.auth_url)
    yield tokens
    tokens.close()


def oauth_env(
    server: BackgroundServer, secret: str = CLIENT_SECRET, auth_url: str = ""
) -> dict[str, str]:
    return {
        "METRICRELAY_API_URL": server.base_url,
        "METRICRELAY_AUTH_URL": auth_url or server.auth_url,
        "METRICRELAY_CLIENT_ID": CLIENT_ID,
        "METRICRELAY_CLIENT_SECRET": secret,
    }


def token_env(api_url: str) -> dict[str, str]:
    return {"METRICRELAY_API_URL": api_url, "METRICRELAY_TOKEN": FIXED_TOKEN}


StartView = Callable[[dict[str, str]], str]


@pytest.fixture(scope="module")
def start_view() -> Iterator[StartView]:
    """``start_view(env)``: a ``metricrelay view --port 0`` process; its URL (no trailing /)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("METRICRELAY_", "AICORE_"))}
        process = subprocess.Popen(
            [sys.executable, "-m", "metricrelay", "view", "--port", "0"],
            env={**env, **settings},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded: the URL, or EOF when the process exits
        if not line.startswith(b"viewer: "):
            process.wait(timeout=START_S)
            assert process.stderr is not None
            raise AssertionError(f"metricrelay view did not start: {process.stderr.read()!r}")
        return line.split()[1].decode().rstrip("/")

    yield start
    for process in started:
        process.send_signal(signal.SIGINT)
    for process in started:
        process.communicate(timeout=START_S)
