"""The demo page (templates/sse_notify/index.html) in a real headless Chromium against a real gunicorn."""

from __future__ import annotations

import os
import re
import time
import typing as t
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    expect,
)

from .browser import TIMEOUT, VIEWPORT, notice, query_of, stream_requests, streams_of
from .support import PUBLISH_KEY, ROOT, Server, stays, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.server]

SCREENSHOT = ROOT / "docs" / "screenshot.png"


@pytest.fixture(name="open_page")
def _open_page(context: BrowserContext, request: pytest.FixtureRequest) -> t.Iterator[t.Callable[..., Page]]:
    """Open the page (``#key=<publish key>``) in a new tab and wait until its stream is live.

    ``key=""`` opens it without a key, ``live=False`` does not wait, ``server`` is
    another server than ``live_server``, ``in_context`` another browser context than
    ``context`` (the tabs of one context share one stream). No tab may raise a JavaScript error.
    """
    errors: list[str] = []

    def open_page(
        query: str = "",
        *,
        key: str = PUBLISH_KEY,
        live: bool = True,
        server: Server | None = None,
        in_context: BrowserContext | None = None,
    ) -> Page:
        server = server or request.getfixturevalue("live_server")
        page = (in_context or context).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/" + query + (f"#key={quote(key, safe='')}" if key else ""))
        if live:
            expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
        return page

    yield open_page
    assert not errors, f"JavaScript errors on the page: {errors}"


def is_stream(user: str) -> t.Callable[[str], bool]:
    """A route matcher for ``user``'s stream URL, whatever its query (token, last_event_id)."""
    return lambda url: urlsplit(url).path == f"/connection/{user}"


def test_notice_for_the_user_appears_and_others_do_not(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """A notice for alice shows on her page, unread, with title, text and a toast; bob's never does."""
    page = open_page()
    expect(page.locator("#user")).to_have_value("alice")
    expect(page.locator("#who")).to_have_text("alice")
    expect(page.locator("#badge")).to_be_hidden()
    live_server.publish("bob", {"title": "for bob"})
    sent = live_server.publish("alice", {"title": "Deploy finished", "text": "api v2 is live"})
    item = notice(page, "Deploy finished")
    expect(item).to_have_count(1, timeout=TIMEOUT)
    expect(item.locator(".text")).to_have_text("api v2 is live")
    expect(item).to_have_attribute("data-id", str(sent["id"]))
    expect(item).to_have_class(re.compile(r"\bunread\b"))
    expect(item.locator("time")).to_have_attribute("datetime", sent["created_at"])
    expect(page.locator("#toasts .toast-title")).to_have_text(["Deploy finished"])
    # Bob's notice was stored before alice's, so it would have arrived first.
    expect(notice(page, "for bob")).to_have_count(0)
    expect(page.locator("#notices li")).to_have_count(1)
    expect(page.locator("#badge")).to_have_text("1")
    expect(page.locator("#count")).to_have_text("1 unread")
    expect(page).to_have_title("(1) Inbox · sse_notify")


def test_the_inbox_so_far_is_listed_at_once_with_its_read_state(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """Opened later, the page lists the inbox so far (newest first, read ones marked), without toasts."""
    first = live_server.publish("alice", {"title": "older, read"})
    live_server.publish("alice", {"title": "newer, unread"})
    response = live_server.post(f"/users/alice/notices/{first['id']}/read", None)
    assert response.status_code == 200, response.text
    page = open_page()
    expect(page.locator("#notices .title")).to_have_text(["newer, unread", "older, read"])
    expect(notice(page, "older, read")).not_to_have_class(re.compile(r"\bunread\b"))
    expect(notice(page, "older, read").locator("button[name=toggle]")).to_have_text("Mark unread")
    expect(notice(page, "newer, unread")).to_have_class(re.compile(r"\bunread\b"))
    expect(page.locator("#badge")).to_have_text("1")
    expect(page.locator("#toasts .toast")).to_have_count(0)


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


def test_an_http_error_on_reconnect_is_retried_and_resumes(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """A reconnect answered 503 closes the EventSource; the page retries itself from its last id."""
    page = open_page()
    first = live_server.publish("alice", {"title": "first"})
    expect(notice(page, "first")).to_have_count(1, timeout=TIMEOUT)
    # The first reconnect gets a 503 (as from a proxy while the server restarts).
    context.route(
        is_stream("alice"),
        lambda route: route.fulfill(status=503, content_type="text/plain", body="restarting"),
        times=1,
    )
    requests = stream_requests(page)
    second = live_server.publish("alice", {"title": "second"})
    live_server.restart()
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    live_server.publish("alice", {"title": "third"})
    expect(page.locator("#notices .title")).to_have_text(["third", "second", "first"], timeout=TIMEOUT)
    # Resumed with a new token each time, from whichever notice it had seen last.
    streams = streams_of(requests)
    assert len(streams) >= 2, requests
    for url in streams:
        assert query_of(url)["last_event_id"] in (str(first["id"]), str(second["id"])), url
    # (Token requests while the server was down failed, and were tried again.)
    assert len([url for url in requests if url.endswith("/users/alice/tokens")]) >= len(streams), requests


def test_missed_notices_banner_on_reset(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """A ``reset`` event (the server cannot resume from the page's id) shows the "missed" banner."""
    stored = live_server.publish("alice", {"title": "already stored"})
    unknown = live_server.stream_url("alice", f"last_event_id={stored['id'] + 1000}")
    # The first connection claims an id the store never issued: the server answers with a reset.
    context.route(is_stream("alice"), lambda route: route.continue_(url=unknown), times=1)
    page = open_page()
    expect(page.locator("#missed")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#missed")).to_contain_text("some notices were missed", ignore_case=True)
    live_server.publish("alice", {"title": "after the reset"})
    expect(page.locator("#notices .title")).to_have_text(
        ["after the reset", "already stored"], timeout=TIMEOUT
    )
    expect(page.locator("#toasts .toast-title")).to_have_text(["after the reset"])


def test_user_from_query_switching_closes_the_old_stream(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """``?user=bob`` signs in as bob; switching to carol closes bob's stream; the choice is remembered."""
    page = open_page("?user=bob")
    expect(page.locator("#user")).to_have_value("bob")
    live_server.publish("bob", {"title": "hi bob"})
    expect(notice(page, "hi bob")).to_have_count(1, timeout=TIMEOUT)

    page.fill("#user", "carol")
    page.press("#user", "Enter")
    expect(page.locator("#who")).to_have_text("carol")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#notices li")).to_have_count(0)
    expect(page.locator("#badge")).to_be_hidden()
    assert page.url.endswith("?user=carol")
    live_server.publish("bob", {"title": "bob again"})
    live_server.publish("carol", {"title": "hi carol"})
    expect(page.locator("#notices .title")).to_have_text(["hi carol"], timeout=TIMEOUT)
    wait_for(lambda: live_server.health()["streams"] == 1, 10, "bob's stream to be closed")

    page.goto(live_server.url + "/")
    expect(page.locator("#user")).to_have_value("carol")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)


def test_notice_data_is_shown_as_text_never_html(
    open_page: t.Callable[..., Page], live_server: Server
) -> None:
    """Markup in a notice is displayed literally (list and toast); data without title/text/body is JSON."""
    page = open_page()
    evil = '<img src=x onerror="window.pwned = 1">'
    live_server.publish("alice", {"title": evil, "body": "<b>not bold</b>"})
    live_server.publish("alice", {"order": 42, "status": "<script>shipped</script>"})
    expect(page.locator("#notices li")).to_have_count(2, timeout=TIMEOUT)
    expect(notice(page, evil).locator(".text")).to_have_text("<b>not bold</b>")
    expect(page.locator("#notices pre")).to_contain_text('"status": "<script>shipped</script>"')
    # Toasts, newest first: data without a title gets a generic one.
    expect(page.locator("#toasts .toast-title")).to_have_text([re.compile(r"^New notice #\d+$"), evil])
    expect(page.locator("#notices :is(img, b, script), #toasts :is(img, b, script)")).to_have_count(0)
    assert page.evaluate("window.pwned") is None


def test_without_a_key_the_page_asks_for_one(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """Without a key: a Connect card, "no key", no stream; a wrong key is refused, the right one connects."""
    requests = stream_requests(context)
    page = open_page(key="", live=False)
    expect(page.locator("#connect")).to_be_visible()
    expect(page.locator("#connect")).to_contain_text("instance/publish_key")
    expect(page.locator("#status")).to_have_text("no key")
    expect(page.locator("#key-info")).to_be_hidden()
    stays(lambda: live_server.health()["streams"] == 0, 1, "no stream may open without a key")
    assert page.evaluate("demo.inbox") is None
    assert requests == []

    page.fill("#key", "not-the-key")
    page.click("#key-btn")
    expect(page.locator("#key-hint")).to_have_text(
        "The server refused this key: this publish key is not valid", timeout=TIMEOUT
    )
    expect(page.locator("#status")).to_have_text("no key")
    assert page.evaluate("localStorage.getItem('sse_notify.key')") is None
    assert page.evaluate("demo.inbox") is None
    assert not streams_of(requests)

    page.fill("#key", PUBLISH_KEY)
    page.press("#key", "Enter")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#connect")).to_be_hidden()
    expect(page.locator("#key-info")).to_be_visible()
    assert page.evaluate("localStorage.getItem('sse_notify.key')") == PUBLISH_KEY
    live_server.publish("alice", {"title": "after connecting"})
    expect(notice(page, "after connecting")).to_have_count(1, timeout=TIMEOUT)

    page.click("#key-forget")
    expect(page.locator("#status")).to_have_text("no key")
    expect(page.locator("#connect")).to_be_visible()
    assert page.evaluate("localStorage.getItem('sse_notify.key')") is None
    wait_for(lambda: live_server.health()["streams"] == 0, 10, "the stream to close after Forget")


def test_the_key_is_removed_from_the_address_bar(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """The ``#key=`` fragment leaves the address bar and history; the key travels only as a header."""
    sent: list[tuple[str, str | None]] = []
    context.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    page = open_page("?user=alice")
    assert page.url == live_server.url + "/?user=alice"
    assert page.evaluate("location.hash") == ""
    assert page.evaluate("localStorage.getItem('sse_notify.key')") == PUBLISH_KEY
    assert not [url for url, _ in sent if PUBLISH_KEY in url]
    assert (f"{live_server.url}/users/alice/tokens", f"Bearer {PUBLISH_KEY}") in sent, sent
    # The key's URL was replaced, not pushed: going back leaves the page.
    page.go_back()
    assert page.url == "about:blank"
    page.go_forward()
    assert page.url == live_server.url + "/?user=alice"
    # Loaded again without the fragment, the page uses the key it saved.
    page.reload()
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#connect")).to_be_hidden()


def test_an_expiring_token_is_renewed_with_nothing_lost_or_repeated(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """With 2-second tokens the stream is renewed: notices before, across and after expiry show once."""
    requests = stream_requests(context)
    opened = time.time()
    page = open_page("?ttl=2")
    titles: list[str] = []
    # More than a snapshot's worth (10), so the list must keep what it had across the renewal.
    while time.time() < opened + 3.5 or len(titles) < 12:
        titles.append(f"notice {len(titles) + 1}")
        live_server.publish("alice", {"title": titles[-1]})
        time.sleep(0.2)
    titles.append("after the first token expired")
    live_server.publish("alice", {"title": titles[-1]})
    expect(page.locator("#notices .title")).to_have_text(titles[::-1], timeout=TIMEOUT)
    tokens = [url for url in requests if "/tokens" in url]
    assert len(tokens) >= 2, requests
    assert all(query_of(url)["ttl"] == "2" for url in tokens), tokens
    assert "last_event_id" in query_of(streams_of(requests)[-1])
    # Renewing is not an outage: the page never said it was reconnecting.
    assert "reconnecting" not in page.evaluate("demo.history")
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#badge")).to_have_text(str(len(titles)))
    wait_for(lambda: live_server.health()["streams"] == 1, 10, "the expired streams to close")


def test_a_kick_closes_the_stream_until_the_person_reconnects(
    open_page: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """A kick shows "Closed by an administrator" and the page stays closed; Reconnect resumes."""
    page = open_page()
    live_server.publish("alice", {"title": "before the kick"})
    expect(notice(page, "before the kick")).to_have_count(1, timeout=TIMEOUT)
    requests = stream_requests(context)
    response = live_server.post("/users/alice/kick", None)
    assert response.status_code == 202, response.text
    expect(page.locator("#closed")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#closed")).to_contain_text("Closed by an administrator")
    expect(page.locator("#status")).to_have_text("closed")
    wait_for(lambda: live_server.health()["streams"] == 0, 10, "the kicked stream to end")
    stays(lambda: live_server.health()["streams"] == 0, 1.5, "the page must not reconnect by itself")
    assert requests == []
    expect(page.locator("#status")).to_have_text("closed")

    live_server.publish("alice", {"title": "while closed"})
    page.click("#reconnect")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#closed")).to_be_hidden()
    expect(page.locator("#notices .title")).to_have_text(["while closed", "before the kick"], timeout=TIMEOUT)


def test_a_newer_browser_beyond_the_limit_closes_the_oldest(
    open_page: t.Callable[..., Page], browser: Browser, make_server: t.Callable[..., Server]
) -> None:
    """Past the per-user stream limit, the oldest browser says "opened a newer tab" and stays closed."""
    # A limit of 2, not 1: with 1, Hub.connect loses track of the new stream (see the report on #3).
    server = make_server(SSE_NOTIFY_MAX_STREAMS_PER_USER="2")
    # Tabs of one browser share a stream: each of these is a browser of its own.
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(3)]
    try:
        oldest, middle, newest = (open_page(server=server, in_context=c) for c in contexts)
        expect(oldest.locator("#closed")).to_contain_text(
            "Closed: this user opened a newer tab", timeout=TIMEOUT
        )
        expect(oldest.locator("#status")).to_have_text("closed")
        server.publish("alice", {"title": "for the open tabs"})
        for tab in (middle, newest):
            expect(notice(tab, "for the open tabs")).to_have_count(1, timeout=TIMEOUT)
        stays(lambda: server.health()["streams"] == 2, 1.5, "the closed tab must not take a stream back")

        oldest.click("#reconnect")
        expect(oldest.locator("#status")).to_have_text("live", timeout=TIMEOUT)
        expect(notice(oldest, "for the open tabs")).to_have_count(1, timeout=TIMEOUT)
        expect(middle.locator("#closed")).to_contain_text("opened a newer tab", timeout=TIMEOUT)
        expect(newest.locator("#status")).to_have_text("live")
    finally:
        for context in contexts:
            context.close()


def test_a_refused_send_shows_the_server_detail(
    open_page: t.Callable[..., Page], make_server: t.Callable[..., Server]
) -> None:
    """Past the publish key's rate limit the form shows the server's 429 detail; nothing is sent."""
    server = make_server(SSE_NOTIFY_RATE_LIMIT="3/minute")
    page = open_page(server=server)  # the token: 1 of 3
    for _ in range(2):
        page.click("#send-btn")
        expect(page.locator("#sent")).to_contain_text("Sent notice #", timeout=TIMEOUT)
    page.fill("#title", "one too many")
    page.click("#send-btn")
    expect(page.locator("#sent")).to_have_text(
        re.compile(
            r"^Not sent: rate limit of 3 per 1 minute per publish key reached; retry in \d+ s \(429\)$"
        ),
        timeout=TIMEOUT,
    )
    expect(page.locator("#sent")).to_have_class("hint error")
    expect(page.locator("#notices .title")).to_have_text(["Hello", "Hello"], timeout=TIMEOUT)


def test_screenshot(open_page: t.Callable[..., Page], live_server: Server, tmp_path: Path) -> None:
    """A 1200x800 screenshot: read, unread, grouped, categorized (into docs/ if SSE_NOTIFY_SCREENSHOT=1)."""
    target = SCREENSHOT if os.environ.get("SSE_NOTIFY_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    shipped = live_server.publish("alice", {"order": 1042, "status": "shipped", "carrier": "DHL"})
    live_server.broadcast({"title": "Scheduled maintenance", "text": "Saturday 02:00-03:00 UTC."})
    live_server.publish("alice", {"title": "New comment on your post", "text": "bob: Looks great, ship it!"})
    deploy = live_server.publish(
        "alice", {"title": "Deploy finished", "body": "api v2.4.1 is live in eu-west."}
    )
    for read in (shipped, deploy):
        assert live_server.post(f"/users/alice/notices/{read['id']}/read", None).status_code == 200
    for who in ("Ben", "Cy", "Ana"):
        live_server.post("/users/alice/notices?group=likes-7", {"title": who, "text": "liked your post"})
    invoice = {"title": "Invoice paid", "text": "INV-2026-118"}
    live_server.post("/users/alice/notices?category=billing", invoice)
    page = open_page()
    expect(page.locator("#notices li")).to_have_count(6, timeout=TIMEOUT)
    expect(page.locator("#notices .title").nth(0)).to_have_text("Invoice paid")
    expect(page.locator("#notices .title").nth(1)).to_have_text("Ana and 2 others")
    page.fill("#title", "Your export is ready")
    page.fill("#text", "reports-2026-11.csv (2.4 MB)")
    page.click("#send-btn")
    expect(page.locator("#notices li")).to_have_count(7, timeout=TIMEOUT)
    expect(page.locator("#badge")).to_have_text("5")
    expect(page.locator("#toasts .toast")).to_have_count(1)
    page.evaluate("document.activeElement.blur()")
    target.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(target), animations="disabled")
    assert target.stat().st_size > 10_000
