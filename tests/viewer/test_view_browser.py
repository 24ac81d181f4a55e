"""``metricrelay view`` in headless Chromium against ``metricrelay api``: list, tag search,
compare, CSV, a reopened URL; every response the page got, read back for secrets; errors."""

from __future__ import annotations

import base64
import csv
import io
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.support.browser import headless_chromium
from tests.support.reference_api import CLIENT_SECRET
from tests.viewer.conftest import (
    FIXED_TOKEN,
    RANKS,
    RUNS,
    STEPS,
    StartView,
    TokenRecorder,
    oauth_env,
    token_env,
)

from metricrelay.api.server import BackgroundServer

pytestmark = pytest.mark.integration

SCREENSHOT_DIR = os.environ.get("METRICRELAY_SCREENSHOT_DIR")  # as tests/api's browser test
WAIT_S = 20.0
COMPARED = ["run-a", "run-b", "run-c"]
CHARTS = sorted(f"{name} {{rank={rank}}}" for name in ("accuracy", "loss") for rank in RANKS)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with headless_chromium(
        profile, window="1400,1500", page_load_timeout=WAIT_S, log_network=True
    ) as browser:
        yield browser


def _open(driver: Any, url: str | None, *, error: bool = False) -> dict[str, Any]:
    """Load ``url`` (or stay) and wait until the page is ready or shows an error."""
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415 - after the skip

    if url is not None:
        driver.get(url)
    settled = "return window.viewer && (window.viewer.ready || window.viewer.error)"
    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: d.execute_script(settled))
    state: dict[str, Any] = driver.execute_script("return window.viewer")
    assert bool(state["error"]) == error, state["error"]
    return state


def _after(driver: Any, action: Any) -> dict[str, Any]:
    """Do ``action`` (a user's click or edit) and wait for the page's next outcome."""
    driver.execute_script("window.viewer.ready = false; window.viewer.error = null")
    action()
    return _open(driver, None)


def _responses(driver: Any) -> list[tuple[str, bytes]]:
    """(url, body) of every response the page received since the log was last read."""
    out = []
    for entry in driver.get_log("performance"):
        message = orjson.loads(entry["message"])["message"]
        if message["method"] != "Network.loadingFinished":
            continue
        request_id = message["params"]["requestId"]
        try:
            body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request_id})
        except Exception:  # a redirect or a data: URL has no body to read
            continue
        text = body["body"]
        out.append((request_id, base64.b64decode(text) if body["base64Encoded"] else text.encode()))
    return out


def _urls(driver: Any) -> list[str]:
    script = "return performance.getEntriesByType('resource').map(e => e.name)"
    return [str(u) for u in driver.execute_script(script)]


@pytest.fixture(scope="module")
def oauth_view(reference: BackgroundServer, recorder: TokenRecorder, start_view: StartView) -> str:
    return start_view(oauth_env(reference, auth_url=recorder.url))


def _compare_three(driver: Any, url: str) -> dict[str, Any]:
    """The user's way: open the list, search by tag, tick the runs, compare."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - after the skip

    state = _open(driver, url + "/")
    assert state["runs"] == sorted(RUNS, reverse=True)  # newest first: every run, one page
    search = driver.find_element(By.ID, "tags")
    search.send_keys("lr=0.1")
    state = _after(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#search button").click())
    assert sorted(state["runs"]) == ["run-a", "run-b"]
    search.clear()
    state = _after(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#search button").click())
    for run in COMPARED:
        box = f"tr[data-run='{run}'] input[type=checkbox]"
        state = _after(driver, lambda b=box: driver.find_element(By.CSS_SELECTOR, b).click())
    return state


def test_compare_three_runs_through_oauth(
    driver: Any, oauth_view: str, recorder: TokenRecorder, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - after the skip

    driver.get_log("performance")  # start reading the network from here
    state = _compare_three(driver, oauth_view)
    assert sorted(state["charts"]) == CHARTS  # one chart per metric and label set
    for chart in state["charts"].values():
        assert chart["series"] == [{"label": run, "points": STEPS} for run in COMPARED]
    assert (
        int(driver.execute_script("return document.querySelectorAll('#charts canvas').length")) == 4
    )
    # hovering a chart shows each run's value at that step in its legend
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415

    canvas = driver.find_element(By.CSS_SELECTOR, "#charts .chart .u-over")
    ActionChains(driver).move_to_element(canvas).perform()
    values = driver.execute_script(
        "return [...document.querySelectorAll('#charts .chart')[0]"
        ".querySelectorAll('.u-legend .u-value')].map(v => v.textContent)"
    )
    assert len(values) == 1 + len(COMPARED) and "--" not in values, values
    side = driver.find_element(By.CSS_SELECTOR, "#side table.side-tags").text
    assert "model" in side and "cnn" in side and "mlp" in side  # tags side by side
    # the CSV offered is what is shown: every point of every chart, raw and as drawn
    href = driver.find_element(By.ID, "csv").get_attribute("href")
    rows = list(csv.DictReader(io.StringIO(urllib.parse.unquote(href.split(",", 1)[1]))))
    assert len(rows) == len(COMPARED) * len(CHARTS) * STEPS
    assert {r["execution_id"] for r in rows} == set(COMPARED)
    assert all(r["value"] == r["shown"] for r in rows)  # no smoothing yet
    # the URL reopens the same view, with the chosen options
    driver.execute_script("document.querySelector('#scale').value = 'log'")
    driver.execute_script("document.querySelector('#smooth').value = '0.5'")
    _after(driver, lambda: driver.execute_script(
        "for (const id of ['#scale', '#smooth']) document.querySelector(id)"
        ".dispatchEvent(new Event(id === '#scale' ? 'change' : 'input'))"))  # fmt: skip
    url = driver.current_url
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["executionIds"] == [",".join(COMPARED)]
    assert (query["scale"], query["smooth"]) == (["log"], ["0.5"])
    reopened = _open(driver, url)
    assert sorted(reopened["charts"]) == CHARTS
    assert driver.execute_script("return document.querySelector('#scale').value") == "log"
    smoothed = list(csv.DictReader(io.StringIO(reopened["csv"])))
    assert any(r["value"] != r["shown"] for r in smoothed)  # the smoothing came back too
    _screenshot(driver, tmp_path)
    # every response the page got: neither the client secret nor a token in any of them
    bodies = _responses(driver)
    assert len(bodies) >= 8, bodies
    assert recorder.tokens
    for _, body in bodies:
        for secret in (CLIENT_SECRET, *recorder.tokens):
            assert secret.encode() not in body
    assert all(urllib.parse.urlsplit(u).netloc == urllib.parse.urlsplit(oauth_view).netloc
               for u in _urls(driver))  # fmt: skip  # the page talks to the viewer server only


def _screenshot(driver: Any, folder: Path) -> None:
    path = Path(SCREENSHOT_DIR) / "viewer-compare.png" if SCREENSHOT_DIR else folder / "c.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_compare_through_a_fixed_token(
    driver: Any, reference: BackgroundServer, start_view: StartView
) -> None:
    view = start_view(token_env(reference.base_url))
    driver.get_log("performance")
    state = _compare_three(driver, view)
    assert sorted(state["charts"]) == CHARTS
    csv_rows = list(csv.DictReader(io.StringIO(state["csv"])))
    assert len(csv_rows) == len(COMPARED) * len(CHARTS) * STEPS
    for _, body in _responses(driver):
        assert FIXED_TOKEN.encode() not in body


def test_a_run_without_metrics_is_named(driver: Any, oauth_view: str) -> None:
    state = _open(driver, f"{oauth_view}/?executionIds=run-a,run-empty")
    assert state["notes"] == ["run-empty: no metrics stored for this execution"]
    assert all(len(c["series"]) == 1 for c in state["charts"].values())


def test_no_executions_is_said(driver: Any, oauth_view: str) -> None:
    _open(driver, f"{oauth_view}/?resourceGroup=nobody-here")
    hint = driver.execute_script("return document.querySelector('#list-hint').textContent")
    assert hint == "No executions in resource group nobody-here."


def test_a_wrong_secret_is_shown_with_the_credential(
    driver: Any, reference: BackgroundServer, start_view: StartView
) -> None:
    view = start_view(oauth_env(reference, secret="not-the-secret"))
    state = _open(driver, view + "/", error=True)
    shown = driver.execute_script("return document.querySelector('#error').textContent")
    assert shown == state["error"]
    assert shown.startswith("HTTP 401: ")
    assert "'sb-test-client'" in shown and "METRICRELAY_CLIENT_SECRET" in shown
    assert "resource group: default" in shown
    assert "not-the-secret" not in driver.page_source


def test_an_unreachable_api_is_shown(driver: Any, start_view: StartView) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    view = start_view(token_env(f"http://127.0.0.1:{port}/v2"))
    state = _open(driver, view + "/", error=True)
    assert state["error"].startswith(
        f"HTTP 502: the AI API at http://127.0.0.1:{port}/v2 is unreachable"
    )
