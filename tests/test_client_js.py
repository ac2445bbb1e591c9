"""sse-notify.js across tabs, in a real headless Chromium against a real gunicorn.

The demo page is the harness: it signs in with the client and shows its state. One tab of
a user holds the stream (Web Locks) and relays to the others (BroadcastChannel).
"""

from __future__ import annotations

import re
import time
import typing as t
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from .browser import TIMEOUT, VIEWPORT, notice, query_of, stream_requests, streams_of
from .support import PUBLISH_KEY, Server, stays, token_for, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.server]

UNREAD = re.compile(r"\bunread\b")
#: Collects the titles the page's client announces (``notice`` events) in ``window.arrived``.
RECORD_ARRIVALS = "() => { window.arrived = []; demo.inbox.on('notice', (n) => arrived.push(n.data.title)); }"


@pytest.fixture(name="open_tab")
def _open_tab(context: BrowserContext, live_server: Server) -> t.Iterator[t.Callable[..., Page]]:
    """Open the demo page as alice in a new tab of ``context`` and wait until it is live.

    Each tab records the titles its client announces as new (``notice`` events) in
    ``window.arrived``. No tab may raise a JavaScript error.
    """
    errors: list[str] = []

    def open_tab(*, server: Server | None = None, in_context: BrowserContext | None = None) -> Page:
        page = (in_context or context).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{(server or live_server).url}/#key={quote(PUBLISH_KEY, safe='')}")
        page.evaluate(RECORD_ARRIVALS)
        expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
        return page

    yield open_tab
    assert not errors, f"JavaScript errors on the page: {errors}"


def arrived(page: Page) -> list[str]:
    """The titles ``page``'s client announced as new notices, in order."""
    return t.cast(list[str], page.evaluate("arrived"))


def leaders(tabs: list[Page]) -> list[Page]:
    """The tabs whose client holds the stream."""
    return [tab for tab in tabs if tab.evaluate("demo.inbox.isLeader")]


def test_two_tabs_of_one_user_both_show_a_published_notice(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """Two tabs of alice, one leading: both list her notice and a broadcast, unread, announced once each."""
    tabs = [open_tab(), open_tab()]
    assert leaders(tabs) == [tabs[0]]
    sent = live_server.publish("alice", {"title": "for every tab"})
    live_server.publish("bob", {"title": "for bob"})
    live_server.broadcast({"title": "maintenance at noon", "text": "for everyone"})
    for tab in tabs:
        expect(tab.locator("#notices .title")).to_have_text(
            ["maintenance at noon", "for every tab"], timeout=TIMEOUT
        )
        item = notice(tab, "for every tab")
        expect(item).to_have_attribute("data-id", str(sent["id"]))
        expect(item).to_have_class(UNREAD)
        expect(tab.locator("#notices li.broadcast .tag")).to_have_text("broadcast")
        expect(tab.locator("#badge")).to_have_text("2")
        expect(tab.locator("#toasts .toast-title")).to_have_text(["maintenance at noon", "for every tab"])
        assert arrived(tab) == ["for every tab", "maintenance at noon"]


def test_marking_read_in_one_tab_updates_the_other(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """Mark read, mark unread and mark all read in one tab: the other tab's items and badge follow."""
    leader, follower = open_tab(), open_tab()
    first = live_server.publish("alice", {"title": "first"})
    live_server.publish("alice", {"title": "second"})
    for tab in (leader, follower):
        expect(tab.locator("#badge")).to_have_text("2", timeout=TIMEOUT)

    # From the tab without the stream: its request, the leader's event, both tabs' state.
    follower.locator(f'#notices li[data-id="{first["id"]}"] button[name=toggle]').click()
    for tab in (leader, follower):
        expect(tab.locator("#badge")).to_have_text("1", timeout=TIMEOUT)
        expect(notice(tab, "first")).not_to_have_class(UNREAD)
        expect(notice(tab, "second")).to_have_class(UNREAD)

    notice(leader, "first").locator("button[name=toggle]").click()
    expect(follower.locator("#badge")).to_have_text("2", timeout=TIMEOUT)
    expect(notice(follower, "first")).to_have_class(UNREAD)

    follower.click("#read-all")
    for tab in (leader, follower):
        expect(tab.locator("#badge")).to_be_hidden(timeout=TIMEOUT)
        expect(tab.locator("#count")).to_have_text("0 unread")
        expect(tab.locator("#notices li.unread")).to_have_count(0)
    assert live_server.post("/users/alice/notices/read-all", None).json()["unread"] == 0


def test_archive_in_one_tab_removes_it_in_both_and_unarchive_brings_it_back(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """Archive in one tab: gone from both inboxes, in the other's Archived view; Unarchive restores it."""
    leader, follower = open_tab(), open_tab()
    live_server.publish("alice", {"title": "keep"})
    live_server.publish("alice", {"title": "archive me"})
    expect(follower.locator("#notices .title")).to_have_text(["archive me", "keep"], timeout=TIMEOUT)

    follower.click("#tab-archived")
    expect(follower.locator("#archived-empty")).to_be_visible(timeout=TIMEOUT)
    notice(leader, "archive me").locator("button[name=archive]").click()
    for tab in (leader, follower):
        expect(tab.locator("#notices .title")).to_have_text(["keep"], timeout=TIMEOUT)
        expect(tab.locator("#badge")).to_have_text("1")
    # The open Archived view reloads when something is archived.
    archived = follower.locator("#archived li")
    expect(archived.locator(".title")).to_have_text(["archive me"], timeout=TIMEOUT)

    archived.locator("button[name=unarchive]").click()
    expect(archived).to_have_count(0, timeout=TIMEOUT)
    follower.click("#tab-inbox")
    for tab in (leader, follower):
        expect(tab.locator("#notices .title")).to_have_text(["archive me", "keep"], timeout=TIMEOUT)
        expect(tab.locator("#badge")).to_have_text("2")


def test_five_tabs_hold_one_stream(
    open_tab: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """Five tabs of alice hold one stream (the server counts one); later tabs get the list from the leader."""
    requests = stream_requests(context)
    tabs = [open_tab()]
    live_server.publish("alice", {"title": "before the other tabs"})
    expect(notice(tabs[0], "before the other tabs")).to_have_count(1, timeout=TIMEOUT)
    tabs += [open_tab() for _ in range(4)]
    assert leaders(tabs) == [tabs[0]]
    live_server.publish("alice", {"title": "for five tabs"})
    for tab in tabs:
        expect(tab.locator("#notices .title")).to_have_text(
            ["for five tabs", "before the other tabs"], timeout=TIMEOUT
        )
        expect(tab.locator("#badge")).to_have_text("2")
    health = live_server.health()
    assert (health["streams"], health["users"]) == (1, 1), health
    assert len(streams_of(requests)) == 1, requests


def test_when_the_leader_tab_closes_another_takes_over_and_resumes(
    open_tab: t.Callable[..., Page], context: BrowserContext, live_server: Server
) -> None:
    """Close the leading tab: another leads within a second or so, from the last id; nothing lost or twice."""
    tabs = [open_tab() for _ in range(3)]
    before = live_server.publish("alice", {"title": "before"})
    for tab in tabs:
        expect(notice(tab, "before")).to_have_count(1, timeout=TIMEOUT)
    [leader] = leaders(tabs)
    rest = [tab for tab in tabs if tab is not leader]
    requests = stream_requests(context)

    leader.close()
    closed = time.monotonic()
    live_server.publish("alice", {"title": "right after"})  # most likely before the new stream opens
    new_leader = wait_for(lambda: leaders(rest), 3, "another tab to take the lead")[0]
    expect(new_leader.locator("#status")).to_have_text("live", timeout=3000)
    assert time.monotonic() - closed < 2.5
    for tab in rest:
        expect(tab.locator("#notices .title")).to_have_text(["right after", "before"], timeout=TIMEOUT)
        expect(tab.locator("#status")).to_have_text("live")
        assert arrived(tab) == ["before", "right after"]
    [stream] = streams_of(requests)
    assert query_of(stream)["last_event_id"] == str(before["id"]), stream
    wait_for(lambda: live_server.health()["streams"] == 1, 10, "the closed tab's stream to end")


def test_after_a_restart_the_page_shows_what_was_published_while_the_server_was_down(
    open_tab: t.Callable[..., Page], live_server: Server, make_server: t.Callable[..., Server]
) -> None:
    """Server down: "reconnecting"; a notice stored meanwhile (via another server) shows once it is back."""
    leader, follower = open_tab(), open_tab()
    live_server.publish("alice", {"title": "before the stop"})
    expect(notice(follower, "before the stop")).to_have_count(1, timeout=TIMEOUT)

    live_server.stop()
    for tab in (leader, follower):
        expect(tab.locator("#status")).to_have_text("reconnecting", timeout=TIMEOUT)
    other = make_server(store=live_server.store)
    other.publish("alice", {"title": "while it was down"})
    other.stop()
    live_server.start()

    for tab in (leader, follower):
        expect(tab.locator("#notices .title")).to_have_text(
            ["while it was down", "before the stop"], timeout=TIMEOUT
        )
        expect(tab.locator("#status")).to_have_text("live")
        expect(tab.locator("#badge")).to_have_text("2")
        assert arrived(tab) == ["before the stop", "while it was down"]
    assert leader.evaluate("demo.history") == ["connecting", "live", "reconnecting", "live"]


def test_without_web_locks_every_tab_keeps_its_own_stream(
    open_tab: t.Callable[..., Page], browser: Browser, live_server: Server
) -> None:
    """Without Web Locks each tab has its own stream (the server counts two), and both stay in step."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script("delete Navigator.prototype.locks")
    try:
        tabs = [open_tab(in_context=context) for _ in range(2)]
        for tab in tabs:
            assert tab.evaluate("[demo.inbox.mode, demo.inbox.isLeader]") == ["solo", True]
        sent = live_server.publish("alice", {"title": "to each tab"})
        for tab in tabs:
            expect(notice(tab, "to each tab")).to_have_count(1, timeout=TIMEOUT)
        assert live_server.health()["streams"] == 2
        tabs[0].evaluate("(id) => demo.inbox.markRead(id)", sent["id"])
        expect(tabs[1].locator("#badge")).to_be_hidden(timeout=TIMEOUT)
        stays(lambda: live_server.health()["streams"] == 2, 0.5, "each tab keeps its one stream")
    finally:
        context.close()


def test_a_category_muted_in_one_tab_shows_in_the_other_and_mutes(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """Unticking a category in one tab unticks it in the other; a notice in it then never shows."""
    first, second = open_tab(), open_tab()
    box = '#prefs-categories input[data-category="promo"]'
    for tab in (first, second):
        expect(tab.locator(box)).to_be_checked(timeout=TIMEOUT)
    second.locator(box).uncheck()  # the tab without the stream: its request, the leader's event
    for tab in (first, second):
        expect(tab.locator(box)).not_to_be_checked(timeout=TIMEOUT)
    muted = live_server.post("/users/alice/notices?category=promo", {"title": "sale!"})
    assert (muted.status_code, muted.json()["status"]) == (200, "suppressed")
    live_server.publish("alice", {"title": "after the sale"})
    for tab in (first, second):
        expect(tab.locator("#notices .title")).to_have_text(["after the sale"], timeout=TIMEOUT)
        expect(tab.locator("#badge")).to_have_text("1")
    first.locator(box).check()
    expect(second.locator(box)).to_be_checked(timeout=TIMEOUT)


def test_a_group_counter_rises_live_in_every_tab(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """Grouped notices are one entry, "Ana and N others", counted once in the badge, in every tab."""
    tabs = [open_tab(), open_tab()]
    for n, who in enumerate(["Ben", "Cy", "Ana"], 1):
        sent = live_server.post("/users/alice/notices?group=likes", {"title": who})
        assert sent.json()["group"]["count"] == n
        for tab in tabs:
            expect(tab.locator("#notices li")).to_have_count(1, timeout=TIMEOUT)
            expect(tab.locator("#notices .title")).to_have_text(
                [who if n == 1 else f"{who} and {n - 1} other" + ("s" if n > 2 else "")]
            )
            expect(tab.locator("#badge")).to_have_text("1")
    for tab in tabs:
        expect(tab.locator("#notices .tag.count")).to_have_text("\u00d73")


def test_snoozing_in_one_tab_hides_the_notice_in_both_until_it_comes_back(
    open_tab: t.Callable[..., Page], live_server: Server
) -> None:
    """The snooze menu of one tab hides the notice in both tabs; ten seconds later it is back, unread."""
    first, second = open_tab(), open_tab()
    live_server.publish("alice", {"title": "later, please"})
    live_server.publish("alice", {"title": "now"})
    for tab in (first, second):
        expect(tab.locator("#badge")).to_have_text("2", timeout=TIMEOUT)
    notice(second, "later, please").locator("select[name=snooze]").select_option("10")
    for tab in (first, second):
        expect(tab.locator("#notices .title")).to_have_text(["now"], timeout=TIMEOUT)
        expect(tab.locator("#badge")).to_have_text("1")
    for tab in (first, second):
        expect(tab.locator("#notices .title")).to_have_text(["now", "later, please"], timeout=20_000)
        expect(notice(tab, "later, please")).to_have_class(UNREAD)
        expect(tab.locator("#badge")).to_have_text("2")
    assert arrived(first).count("later, please") == 2  # announced when it came, and when it came back


def test_the_es_module_connects_without_a_global(context: BrowserContext, live_server: Server) -> None:
    """import("/sse-notify.mjs") gives the same client, leaves no global SSENotify, and gets a notice live."""
    page = context.new_page()
    page.goto(live_server.url + "/healthz")  # a page of the origin that loads no script
    token = token_for("alice")
    page.evaluate(
        """async (token) => {
          const module = await import("/sse-notify.mjs");
          window.result = { global: typeof window.SSENotify, same: module.default.connect === module.connect,
                            version: module.version, titles: [] };
          const inbox = module.connect({ user: "alice", getToken: async () => token, shareTabs: false });
          inbox.on("notice", (notice) => window.result.titles.push(notice.data.title));
          inbox.on("status", (status) => { window.result.status = status; });
        }""",
        token,
    )
    wait_for(lambda: page.evaluate("window.result.status") == "live", 10, "the module's client to be live")
    live_server.publish("alice", {"title": "from the module"})
    wait_for(lambda: page.evaluate("window.result.titles") == ["from the module"], 10, "the notice")
    result = page.evaluate("window.result")
    assert (result["global"], result["same"], result["version"]) == ("undefined", True, "1.0.0")
