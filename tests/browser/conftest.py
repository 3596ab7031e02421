"""Browser tests: the local stack as a subprocess, and a real Chromium driven by Playwright.

Chromium is the system's (Debian's ``chromium`` package, or ``CHROMIUM_PATH``), never one from
``playwright install``. Without it the tests skip, except when ``CI`` is set: there a missing
browser fails them, since CI must run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from tests.integration.conftest import Stack, start_stack, stop_stack

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often give /dev/shm 64 MB
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 720}
TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, and CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    wanted = os.environ.get("CHROMIUM_PATH") or DEFAULT_CHROMIUM
    found = shutil.which(wanted)
    if found is None:
        _unavailable(f"no Chromium executable at {wanted} (apt-get install chromium, or set CHROMIUM_PATH)")
    return found


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    # Module scope: Playwright's sync API runs its own event loop, so it must be gone before
    # other test modules call asyncio.run().
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = start_stack()  # its output keeps being collected, for failure messages
    yield running
    assert stop_stack(running) == 0, "".join(running.output)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (its own context: no shared storage) at 1280x720; uncaught page errors fail the test."""
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[Any] = []
    opened.on("pageerror", lambda error: errors.append(error))
    yield opened
    context.close()
    assert not errors, f"uncaught errors on the page: {errors}"
