"""SAP's JavaScript SDK for the tests here: installed once into tests/js/node_modules by npm.

No ``node`` or ``npm`` on PATH: the tests are skipped, saying so. The install is bounded by
:data:`NPM_TIMEOUT_S`, pinned by package-lock.json (``npm ci``), and kept for later sessions;
a lock makes parallel sessions wait for one install instead of racing it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "metrics.mjs"
# Written after a complete ``npm ci`` of this lock file: an interrupted install, or a changed
# lock, is installed again.
MARKER = HERE / "node_modules" / ".metricrelay-installed"
NPM_TIMEOUT_S = 300.0
NODE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JsResult:
    """What metrics.mjs printed: ``{"patched", "found"}`` or ``{"error", "status", "body"}``."""

    returncode: int
    output: dict[str, Any]
    stderr: str


RunJs = Callable[[dict[str, Any], dict[str, Any]], JsResult]


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        pytest.skip(
            f"SAP's JavaScript SDK tests need Node.js: {missing} not found on PATH "
            "(install Node.js 20+ with npm to run them)"
        )
    return node, npm


def _install(npm: str) -> None:
    """``npm ci`` into tests/js once; later sessions find the marker and skip it."""
    lock = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    with (HERE / "package.json").open("rb") as anchor:
        fcntl.flock(anchor, fcntl.LOCK_EX)  # another session may be installing right now
        if MARKER.exists() and MARKER.read_text() == lock:
            return
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {HERE} took more than {NPM_TIMEOUT_S:g}s")
        if done.returncode != 0:
            pytest.fail(f"npm ci in {HERE} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        MARKER.write_text(lock)


def js_runner() -> RunJs:
    """``run(service_key, plan)``: metrics.mjs with ``AICORE_SERVICE_KEY=service_key``; skips
    the calling test without Node.js, installs the SDK on first use."""
    node, npm = _tools()
    _install(npm)

    def run(service_key: dict[str, Any], plan: dict[str, Any]) -> JsResult:
        env = {**os.environ, "AICORE_SERVICE_KEY": json.dumps(service_key)}
        done = subprocess.run(
            [node, str(SCRIPT), json.dumps(plan)],
            cwd=HERE,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        assert lines, f"metrics.mjs printed nothing (exit {done.returncode}):\n{done.stderr}"
        return JsResult(done.returncode, json.loads(lines[-1]), done.stderr)

    return run
