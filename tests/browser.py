"""A real headless browser for tests: Debian's chromium, driven by Playwright.

Nothing is downloaded: Playwright's own browser builds are never installed (`playwright
install` fetches them from the internet); the system's chromium is launched by path.
scripts/setup.sh installs it with apt where it can. A test that needs it and finds no
Playwright, no chromium, or a chromium that does not start, is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    """IMAGESYNTH_TEST_CHROMIUM, else Debian's chromium, else one on PATH."""
    configured = os.environ.get("IMAGESYNTH_TEST_CHROMIUM")
    if configured:
        return configured
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A launched Playwright `Browser`; RuntimeError saying why when there can be none."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError(f"Playwright is not installed: {exc}") from None
    path = chromium_path()
    if path is None:
        raise RuntimeError(
            "no chromium found (apt-get install chromium, or set IMAGESYNTH_TEST_CHROMIUM)"
        )
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(
                executable_path=path,
                headless=True,
                # Small shared machines: no GPU process, /tmp instead of a small /dev/shm.
                args=["--disable-gpu", "--disable-dev-shm-usage"],
                timeout=30_000,
            )
        except PlaywrightError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"chromium at {path} did not start: {first}") from None
        try:
            yield browser
        finally:
            browser.close()
