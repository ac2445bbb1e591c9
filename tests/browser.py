"""Browser-test helpers: find the system Chromium (never download one) and launch it headless."""

from __future__ import annotations

import typing as t

from .support import require_binary

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


def launch_chromium(playwright: Playwright) -> Browser:
    """Start the system Chromium headless (skip or fail first if it is missing)."""
    path = require_binary(CHROMIUM, "the browser tests drive it (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
