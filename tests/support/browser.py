"""Headless Chromium for the browser tests: Debian's chromium and chromedriver (installed with
apt-get when missing and the test runs as root), driven by Selenium."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# flags that keep Chromium from reaching out to the network this machine does not have
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)  # fmt: skip


def ensure_chromium() -> str | None:
    """None when Chromium and its driver are there (installed now if need be), else why not."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return "no /usr/bin/chromium or chromedriver, and apt-get is missing or needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    # a fresh machine may have no package lists yet: update only when the install needs it
    for commands in ([install], [[apt, "update"], install]):
        try:
            for command in commands:
                subprocess.run(
                    command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                    timeout=300, check=True,
                )  # fmt: skip
            break
        except (subprocess.SubprocessError, OSError) as exc:
            failure = f"{' '.join(command[1:])} failed: {exc}"
    else:
        return failure
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    return "apt-get ran but /usr/bin/chromium or /usr/bin/chromedriver is still missing"


@contextmanager
def headless_chromium(
    profile: Path, *, window: str, page_load_timeout: float, log_network: bool = False
) -> Iterator[Any]:
    """A Selenium driver of headless Chromium with a fresh profile; the test is skipped, saying
    why, when no Chromium can be had. ``log_network``: keep Chrome's performance log, to read
    back every response the page received."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    reason = ensure_chromium()
    if reason is not None:
        pytest.skip(f"BROWSER TEST SKIPPED — no headless Chromium: {reason}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}"):
        options.add_argument(arg)
    if log_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # the driver path is given, so Selenium Manager has nothing to download
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(page_load_timeout)
    try:
        yield browser
    finally:
        browser.quit()
