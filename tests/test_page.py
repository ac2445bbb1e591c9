"""The demo page (templates/index.html) in a real headless Chromium against a real gunicorn."""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from .browser import launch_chromium
from .support import ROOT, Server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.server]

#: Milliseconds for every Playwright wait.
TIMEOUT = 10_000
SCREENSHOT = ROOT / "docs" / "screenshot.png"


@pytest.fixture(name="browser", scope="module")
def _browser() -> t.Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(name="context")
def _context(browser: Browser) -> t.Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    yield context
    context.close()


@pytest.fixture(name="open_page")
def _open_page(context: BrowserContext, live_server: Server) -> t.Iterator[t.Callable[..., Page]]:
    """Open the page in a new tab and wait until its stream is live; no tab may raise a JS error."""
    errors: list[str] = []

    def open_page(query: str = "") -> Page:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live_server.url + "/" + query)
        expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
        return page

    yield open_page
    assert not errors, f"JavaScript errors on the page: {errors}"


def notice(page: Page, title: str) -> Locator:
    """The list items whose title is exactly ``title``."""
    return page.locator("#notices li").filter(has=page.locator(".title", has_text=title))


def test_notice_for_the_user_appears_and_others_do_not(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """A notice for alice shows up on alice's page with its title and text; bob's never does."""
    page = open_page()
    expect(page.locator("#user")).to_have_value("alice")
    live_server.publish("bob", {"title": "for bob"})
    sent = live_server.publish("alice", {"title": "Deploy finished", "text": "api v2 is live"})
    item = notice(page, "Deploy finished")
    expect(item).to_have_count(1, timeout=TIMEOUT)
    expect(item.locator(".text")).to_have_text("api v2 is live")
    expect(item).to_have_attribute("data-id", str(sent["id"]))
    expect(item.locator("time")).to_have_attribute("datetime", sent["created_at"])
    # Bob's notice was stored before alice's, so it would have arrived first.
    expect(notice(page, "for bob")).to_have_count(0)
    expect(page.locator("#notices li")).to_have_count(1)
    expect(page.locator("#count")).to_have_text("1 notice")


def test_two_tabs_both_get_notices_and_broadcasts(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """Two tabs of alice each show her notice and a broadcast, once each, newest first."""
    tabs = [open_page(), open_page()]
    live_server.publish("alice", {"title": "to both tabs"})
    live_server.broadcast({"title": "maintenance at noon", "text": "for everyone"})
    for tab in tabs:
        expect(tab.locator("#notices .title")).to_have_text(
            ["maintenance at noon", "to both tabs"], timeout=TIMEOUT
        )
        expect(tab.locator("#notices li.broadcast .tag")).to_have_text("broadcast")


def test_send_form_publishes_to_the_page_itself(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """The page's own form sends a notice (to alice, then as a broadcast) that arrives on the page."""
    page = open_page()
    expect(page.locator("#to")).to_have_value("alice")
    page.fill("#title", "sent from the form")
    page.fill("#text", "typed by a person")
    page.click("#send-btn")
    expect(page.locator("#sent")).to_contain_text("Sent notice #", timeout=TIMEOUT)
    item = notice(page, "sent from the form")
    expect(item).to_have_count(1, timeout=TIMEOUT)
    expect(item.locator(".text")).to_have_text("typed by a person")

    page.fill("#to", "bob")
    page.fill("#title", "form to bob")
    page.click("#send-btn")
    expect(page.locator("#sent")).to_contain_text("to bob.", timeout=TIMEOUT)

    page.check("#broadcast")
    expect(page.locator("#to")).to_be_disabled()
    page.fill("#title", "form broadcast")
    page.click("#send-btn")
    expect(page.locator("#sent")).to_contain_text("to everyone.", timeout=TIMEOUT)
    expect(page.locator("#notices .title")).to_have_text(
        ["form broadcast", "sent from the form"], timeout=TIMEOUT
    )


def test_reconnects_after_a_restart_without_duplicates(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """After a server restart the page goes reconnecting, then live by itself; nothing shows twice."""
    page = open_page()
    live_server.publish("alice", {"title": "before"})
    expect(notice(page, "before")).to_have_count(1, timeout=TIMEOUT)
    seen = page.evaluate("sseNotify.history.length")
    live_server.publish("alice", {"title": "just before the stop"})
    live_server.restart()
    page.wait_for_function(
        "n => sseNotify.history.slice(n).includes('reconnecting')", arg=seen, timeout=TIMEOUT
    )
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    live_server.publish("alice", {"title": "after the restart"})
    expect(page.locator("#notices .title")).to_have_text(
        ["after the restart", "just before the stop", "before"], timeout=TIMEOUT
    )
    assert page.evaluate("sseNotify.history.slice(0, 2)") == ["connecting", "live"]


def test_an_http_error_on_reconnect_is_retried_and_resumes(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """A reconnect answered 503 closes the EventSource; the page retries itself from its last id."""
    page = open_page()
    first = live_server.publish("alice", {"title": "first"})
    expect(notice(page, "first")).to_have_count(1, timeout=TIMEOUT)
    # The browser's own reconnect gets a 503 (as from a proxy while the server restarts).
    context.route(
        "**/connection/alice",
        lambda route: route.fulfill(status=503, content_type="text/plain", body="restarting"),
        times=1,
    )
    second = live_server.publish("alice", {"title": "second"})
    live_server.restart()
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    live_server.publish("alice", {"title": "third"})
    expect(page.locator("#notices .title")).to_have_text(["third", "second", "first"], timeout=TIMEOUT)
    # Resumed by the page (not the browser), from whichever notice it had seen last.
    url = page.evaluate("sseNotify.source.url")
    assert url.rsplit("?last_event_id=", 1)[-1] in (str(first["id"]), str(second["id"])), url


def test_missed_notices_banner_on_reset(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """A ``reset`` event (the server cannot resume from the page's id) shows the "missed" banner."""
    stored = live_server.publish("alice", {"title": "already stored"})
    unknown = f"{live_server.url}/connection/alice?last_event_id={stored['id'] + 1000}"
    # The first connection claims an id the store never issued: the server answers with a reset.
    context.route("**/connection/alice", lambda route: route.continue_(url=unknown), times=1)
    page = open_page()
    expect(page.locator("#missed")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#missed")).to_contain_text("some notices were missed", ignore_case=True)
    live_server.publish("alice", {"title": "after the reset"})
    expect(page.locator("#notices .title")).to_have_text(["after the reset"], timeout=TIMEOUT)


def test_user_from_query_switching_closes_the_old_stream(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """``?user=bob`` watches bob; switching to carol closes bob's stream; the choice is remembered."""
    page = open_page("?user=bob")
    expect(page.locator("#user")).to_have_value("bob")
    live_server.publish("bob", {"title": "hi bob"})
    expect(notice(page, "hi bob")).to_have_count(1, timeout=TIMEOUT)

    page.fill("#user", "carol")
    page.press("#user", "Enter")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#notices li")).to_have_count(0)
    assert page.url.endswith("?user=carol")
    live_server.publish("bob", {"title": "bob again"})
    live_server.publish("carol", {"title": "hi carol"})
    expect(page.locator("#notices .title")).to_have_text(["hi carol"], timeout=TIMEOUT)
    # The server notices the closed stream at its next heartbeat.
    wait_for(lambda: live_server.health()["streams"] == 1, 10, "bob's stream to be closed")

    page.goto(live_server.url + "/")
    expect(page.locator("#user")).to_have_value("carol")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)


def test_notice_data_is_shown_as_text_never_html(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """Markup in a notice is displayed literally; data without title/text/body is shown as JSON."""
    page = open_page()
    evil = '<img src=x onerror="window.pwned = 1">'
    live_server.publish("alice", {"title": evil, "body": "<b>not bold</b>"})
    live_server.publish("alice", {"order": 42, "status": "<script>shipped</script>"})
    expect(page.locator("#notices li")).to_have_count(2, timeout=TIMEOUT)
    expect(notice(page, evil).locator(".text")).to_have_text("<b>not bold</b>")
    expect(page.locator("#notices pre")).to_contain_text('"status": "<script>shipped</script>"')
    expect(page.locator("#notices img, #notices b, #notices script")).to_have_count(0)
    assert page.evaluate("window.pwned") is None


def test_screenshot(open_page: t.Callable[..., Page], live_server: Server, tmp_path: Path) -> None:
    """A 1200x800 screenshot with a few notices renders (into docs/ when SSE_NOTIFY_SCREENSHOT=1)."""
    target = SCREENSHOT if os.environ.get("SSE_NOTIFY_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    page = open_page()
    live_server.publish("alice", {"order": 1042, "status": "shipped", "carrier": "DHL"})
    live_server.broadcast({"title": "Scheduled maintenance", "text": "Saturday 02:00-03:00 UTC."})
    live_server.publish("alice", {"title": "New comment on your post", "text": "bob: Looks great, ship it!"})
    live_server.publish("alice", {"title": "Deploy finished", "body": "api v2.4.1 is live in eu-west."})
    expect(page.locator("#notices li")).to_have_count(4, timeout=TIMEOUT)
    page.click("#send-btn")
    expect(page.locator("#notices li")).to_have_count(5, timeout=TIMEOUT)
    page.evaluate("document.activeElement.blur()")
    target.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(target), animations="disabled")
    assert target.stat().st_size > 10_000
