"""The run viewer in headless Chromium: charts, series, points, table, figures; a screenshot."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.support.browser import headless_chromium

pytestmark = pytest.mark.integration

# the committed screenshot for the README is refreshed only on request (no dirty tree after tests)
SCREENSHOT_DIR = os.environ.get("METRICRELAY_SCREENSHOT_DIR")
STEPS = 6
NAMES = ("accuracy", "loss")
RANKS = (0, 1)
WAIT_S = 20.0


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with headless_chromium(profile, window="1400,1600", page_load_timeout=WAIT_S) as browser:
        yield browser


def _png_1x1() -> str:
    """A one-pixel PNG, base64: what ``Emitter.log_figure`` stores for PNG bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x0a\x6e\xd1")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    return base64.b64encode(png + chunk(b"IEND", b"")).decode()


def _execution(execution_id: str, steps: int, tags: dict[str, str]) -> dict[str, Any]:
    metrics = [
        {
            "name": name,
            "value": (1.0 / (step + 1 + rank)) if name == "loss" else step / steps,
            "timestamp": f"2026-11-23T12:{step:02d}:{rank:02d}.000Z",
            "step": step,
            "labels": [{"name": "rank", "value": str(rank)}],
        }
        for name in NAMES
        for rank in RANKS
        for step in range(steps)
    ]
    report = {"accuracy": 0.9, "classes": {"cat": {"precision": 0.8, "recall": 0.7}}}
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="60" height="30"><rect width="60" height="30" fill="#0a6ed1"/></svg>'  # noqa: E501
    return {
        "executionId": execution_id,
        "metrics": metrics,
        "tags": [{"name": k, "value": v} for k, v in tags.items()],
        "customInfo": [
            {"name": "Classification Report", "value": orjson.dumps(report).decode()},
            {"name": "Loss Curve", "value": svg},
            {"name": "Confusion Matrix", "value": _png_1x1()},
        ],
    }


def _patch(server: Any, token: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        server.url + "/v2/lm/metrics",
        data=orjson.dumps(body),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "AI-Resource-Group": "default",
            "Content-Type": "application/merge-patch+json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 204


def _token(server: Any, client_id: str = "test", secret: str = "") -> str:
    form = f"grant_type=client_credentials&client_id={client_id}&client_secret={secret}".encode()
    with urllib.request.urlopen(server.url + "/oauth/token", data=form, timeout=10) as reply:
        return str(orjson.loads(reply.read())["access_token"])


@pytest.fixture
def viewer_url(background: Any) -> str:
    # no client restriction: the page gets its own token the way it documents
    server = background(client_id=None, client_secret=None)
    token = _token(server)
    _patch(server, token, _execution("exec-a", STEPS, {"model": "mlp", "lr": "0.1"}))
    _patch(server, token, _execution("exec-b", STEPS - 2, {"model": "cnn"}))
    return str(server.url)


@pytest.fixture
def locked_url(background: Any) -> str:
    server = background(client_id="viewer-test", client_secret="s3cret")
    token = _token(server, "viewer-test", "s3cret")
    _patch(server, token, _execution("exec-a", STEPS, {"model": "mlp"}))
    return str(server.url)


def _open(driver: Any, url: str | None, *, error: str = "") -> dict[str, Any]:
    """Load ``url`` (or stay) and wait until the page is ready or reports an error."""
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415 - after the skip

    if url is not None:
        driver.get(url)
    # polls with a deadline: ready, or an error the page reports
    settled = "return window.viewer && (window.viewer.ready || window.viewer.error)"
    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: d.execute_script(settled))
    state: dict[str, Any] = driver.execute_script("return window.viewer")
    assert (state["error"] or "") == error, state["error"]
    return state


def _count(driver: Any, selector: str) -> int:
    script = "return document.querySelectorAll(arguments[0]).length"
    return int(driver.execute_script(script, selector))


def _screenshot(driver: Any, folder: Path, name: str) -> None:
    path = Path(SCREENSHOT_DIR) / name if SCREENSHOT_DIR else folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_one_execution(driver: Any, viewer_url: str, tmp_path: Path) -> None:
    state = _open(driver, f"{viewer_url}/?resourceGroup=default&executionIds=exec-a")
    charts = state["charts"]
    assert sorted(charts) == list(NAMES)
    for name in NAMES:
        assert charts[name]["series"] == [
            {"label": f"rank={rank}", "points": STEPS} for rank in RANKS
        ]
    assert _count(driver, "#charts .chart canvas") == len(NAMES)  # uPlot drew each chart
    assert _count(driver, "table.metrics tbody tr") == len(NAMES) * len(RANKS) * STEPS
    assert _count(driver, "#executions tbody tr") == 2
    assert _count(driver, "[data-execution='exec-a'] .tag") == 2
    assert _count(driver, "[data-execution='exec-a'] img.figure") == 2  # the SVG and the PNG
    report = driver.execute_script("return document.querySelector('.panel pre').textContent")
    assert '\n  "classes": {' in report  # pretty-printed JSON
    widths = driver.execute_script(
        "return [...document.querySelectorAll('img.figure')].map(i => i.naturalWidth)"
    )
    assert sorted(widths) == [1, 60]  # both figures decoded as images
    _screenshot(driver, tmp_path, "viewer.png")


def test_compare_executions(driver: Any, viewer_url: str) -> None:
    state = _open(driver, f"{viewer_url}/?resourceGroup=default&executionIds=exec-a,exec-b")
    for name in NAMES:
        series = state["charts"][name]["series"]
        assert series == [
            {"label": f"{execution} · rank={rank}", "points": steps}
            for execution, steps in (("exec-a", STEPS), ("exec-b", STEPS - 2))
            for rank in RANKS
        ]
    assert _count(driver, "#charts .chart canvas") == len(NAMES)
    assert _count(driver, "#resources .panel") == 2
    assert _count(driver, "#executions input:checked") == 2


def test_credentials_asked_when_the_server_restricts_clients(driver: Any, locked_url: str) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - after the skip

    _open(driver, f"{locked_url}/?resourceGroup=default&executionIds=exec-a", error="unauthorized")
    login = driver.find_element(By.ID, "login")
    assert login.is_displayed()
    login.find_element(By.NAME, "client_id").send_keys("viewer-test")
    login.find_element(By.NAME, "client_secret").send_keys("s3cret")
    driver.execute_script("window.viewer.error = null")  # wait for the next outcome, not this one
    login.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    state = _open(driver, None)
    assert not login.is_displayed()
    assert [s["points"] for s in state["charts"]["loss"]["series"]] == [STEPS, STEPS]


def test_a_demo_execution_in_the_viewer(driver: Any, tmp_path: Path) -> None:
    """``metricrelay demo --keep`` end to end, then its viewer, as a newcomer would open it."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    argv = ["--executions", "2", "--ranks", "3", "--steps", "40", "--step-ms", "0", "--keep"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "metricrelay", "demo", *argv, "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert demo.stdout is not None
    url = ""
    for line in demo.stdout:  # bounded: the demo prints the viewer URL, or exits
        if line.startswith(b"viewer: "):
            url = line.split()[1].decode().rstrip("/")
            break
    try:
        assert url, "the demo did not print its viewer URL"
        state = _open(driver, f"{url}/?resourceGroup=default&executionIds=demo-run-00")
        charts = state["charts"]
        assert sorted(charts) == ["accuracy", "training_loss"]
        for chart in charts.values():
            assert chart["series"] == [{"label": f"rank={r}", "points": 40} for r in range(3)]
        assert _count(driver, "[data-execution='demo-run-00'] img.figure") == 1  # the loss curve
        _screenshot(driver, tmp_path, "viewer-demo.png")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=60)
