"""examples/scoreboard under a real ``gunicorn -k gevent`` (2 workers), in two headless Chromium pages.

Each page follows the topic ``match-42`` with the browser client; a goal scored on one page shows
on both, and a page whose connection was cut gets the goals it missed from the topic's history.
"""

from __future__ import annotations

import os
import signal
import typing as t
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from .browser import TIMEOUT, VIEWPORT
from .support import PUBLISH_KEY, Server

pytestmark = [pytest.mark.browser, pytest.mark.server]


def scoreboard(browser: Browser, server: Server, errors: list[str]) -> Page:
    """The page in a browser context of its own (its own viewer), once its stream is live."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    return page


def shows(page: Page, home: int, away: int, timeout: float = TIMEOUT) -> None:
    """Wait until ``page`` shows this score."""
    expect(page.locator(f"#score[data-home='{home}'][data-away='{away}']")).to_have_count(1, timeout=timeout)


def test_a_goal_shows_on_every_page_and_a_page_back_online_catches_up(
    browser: Browser, make_server: t.Callable[..., Server], tmp_path: Path
) -> None:
    """Two viewers see each goal; one that was offline for a goal shows it after it reconnects."""
    app = f"examples.scoreboard:create_app({str(tmp_path / 'instance')!r})"
    server = make_server(workers=2, app=app, health_path="/notify/healthz")
    errors: list[str] = []
    first, second = scoreboard(browser, server, errors), scoreboard(browser, server, errors)
    try:
        first.click("#home")
        for page in (first, second):
            shows(page, 1, 0, timeout=TIMEOUT)

        # Every worker is killed. The first page reconnects at once; the second cannot (its
        # reconnects are cut off) while a goal is scored from another service.
        second.route("**/notify/connection/**", lambda route: route.abort())
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        expect(first.locator("#status")).not_to_have_text("live", timeout=TIMEOUT)
        expect(first.locator("#status")).to_have_text("live", timeout=3 * TIMEOUT)
        answer = httpx.post(
            f"{server.url}/notify/topics/match-42/notices",
            json={"home": 1, "away": 1, "scorer": "away"},
            headers={"Authorization": f"Bearer {PUBLISH_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        shows(first, 1, 1, timeout=TIMEOUT)
        shows(second, 1, 0)
        # Back: it resumes from its last event id and replays the goal it missed.
        second.unroute("**/notify/connection/**")
        shows(second, 1, 1, timeout=3 * TIMEOUT)
    finally:
        for page in (first, second):
            page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_a_viewer_token_follows_only_its_match(make_server: t.Callable[..., Server], tmp_path: Path) -> None:
    """The example's token grants match-42 only: a stream asking for another topic gets 403."""
    app = f"examples.scoreboard:create_app({str(tmp_path / 'instance')!r})"
    server = make_server(app=app, health_path="/notify/healthz")
    token = httpx.get(f"{server.url}/token/viewer-1", timeout=10).json()["token"]
    other = httpx.get(f"{server.url}/notify/connection/viewer-1?token={token}&topics=match-7", timeout=10)
    assert other.status_code == 403
    with httpx.stream(
        "GET", f"{server.url}/notify/connection/viewer-1?token={token}&topics=match-42", timeout=10
    ) as ok:
        assert ok.status_code == 200
