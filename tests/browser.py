"""Browser-test helpers: find the system Chromium (never download one) and launch it headless."""

from __future__ import annotations

import os
import shutil
import typing as t

import pytest

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

#: Debian's Chromium (``apt-get install chromium``); Playwright's own builds are never used.
CHROMIUM = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Setting this to "1" (CI does) turns a missing program from a skip into a failure.
REQUIRE_ALL = "SSE_NOTIFY_REQUIRE_ALL"


def require_binary(path_or_name: str, why: str) -> str:
    """The path of an executable the test needs: skip without it, or fail if ``SSE_NOTIFY_REQUIRE_ALL=1``."""
    if os.sep in path_or_name:
        found = path_or_name if os.path.isfile(path_or_name) and os.access(path_or_name, os.X_OK) else None
    else:
        found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed: {why}"
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{message} ({REQUIRE_ALL}=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(message)


def launch_chromium(playwright: Playwright) -> Browser:
    """Start the system Chromium headless (skip or fail first if it is missing)."""
    path = require_binary(CHROMIUM, "the browser tests drive it (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
