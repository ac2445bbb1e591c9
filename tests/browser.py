"""Browser-test helpers: the system Chromium (never a downloaded one), headless; what pages are checked with.

The ``browser`` and ``context`` fixtures that use them are in ``conftest.py``.
"""

from __future__ import annotations

import re
import typing as t
from urllib.parse import parse_qs, urlsplit

from .support import require_binary

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, Request, ViewportSize

#: Milliseconds for every Playwright wait.
TIMEOUT = 10_000
VIEWPORT: ViewportSize = {"width": 1200, "height": 800}

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


def stream_requests(target: Page | BrowserContext) -> list[str]:
    """A list that fills with the URL of every stream and token request of ``target`` from now on."""
    urls: list[str] = []

    def record(request: Request) -> None:
        if "/connection/" in request.url or request.url.endswith("/tokens") or "/tokens?" in request.url:
            urls.append(request.url)

    target.on("request", record)
    return urls


def streams_of(urls: list[str]) -> list[str]:
    """The stream URLs among ``urls`` (see :func:`stream_requests`)."""
    return [url for url in urls if "/connection/" in url]


def query_of(url: str) -> dict[str, str]:
    """The query parameters of ``url`` (one value each)."""
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def notice(page: Page, title: str) -> Locator:
    """The inbox items whose title is exactly ``title``."""
    exact = re.compile(f"^{re.escape(title)}$")
    return page.locator("#notices li").filter(has=page.locator(".title", has_text=exact))
