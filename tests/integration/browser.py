"""Debian's Chromium driven by Playwright, for tests of the web view; never a browser Playwright downloads.

Where no browser is found the test is skipped on a developer's machine and
fails in CI (CI=true), where `.ci/run` installs `chromium`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

# Chromium as root needs --no-sandbox; the rest keep it off a network this machine does not have.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_path() -> str:
    found = os.environ.get("SAGA_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or not os.path.exists(found):
        missing("no Chromium: install Debian's `chromium` package (apt-get install chromium chromium-driver)")
    assert found is not None
    return found


def missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the web view's browser tests cannot run: {why}", pytrace=False)
    pytest.skip(why)


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium with an empty profile."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("the playwright package is not installed (it is in the `test` extra)")
    executable = chromium_path()
    with tempfile.TemporaryDirectory(prefix="saga-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900}
            )
            try:
                yield await context.new_page()
            finally:
                await context.close()
