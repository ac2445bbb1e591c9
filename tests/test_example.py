"""examples/notify_app, a host app with its own login, under a real ``gunicorn -k gevent`` with 2 workers.

Its ``authorize`` hook lets a session read only its own user's stream, with no token; a form
notifies another user; signing out kicks the user's streams. Streams are read with httpx-sse.
"""

from __future__ import annotations

import json
import re
import typing as t
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .browser import TIMEOUT
from .sse_client import Subscriber, on_every_worker, subscribe
from .support import Server, wait_for

pytestmark = pytest.mark.server

#: The example's gunicorn settings, as its README runs it (from the repository root).
CONF = "examples/notify_app/gunicorn.conf.py"
HEALTH = "/notify/healthz"

SignIn = t.Callable[[str], httpx.Client]


@pytest.fixture(name="example")
def _example(make_server: t.Callable[..., Server], tmp_path: Path) -> Server:
    """The example on 2 workers, each answer naming its worker (``X-Worker-Pid``)."""
    app = f"tests.instrumented_example:create_app({str(tmp_path / 'instance')!r})"
    return make_server(workers=2, app=app, config=CONF, health_path=HEALTH)


@pytest.fixture(name="visitor")
def _visitor(example: Server) -> t.Iterator[t.Callable[[], httpx.Client]]:
    """New httpx clients of the example, each with a cookie jar of its own (one per "browser")."""
    clients: list[httpx.Client] = []

    def visitor() -> httpx.Client:
        clients.append(httpx.Client(base_url=example.url, timeout=10))
        return clients[-1]

    yield visitor
    for client in clients:
        client.close()


@pytest.fixture(name="sign_in")
def _sign_in(visitor: t.Callable[[], httpx.Client]) -> SignIn:
    """A client signed in as ``user`` through the login form (demo password: the name + "-demo")."""

    def sign_in(user: str) -> httpx.Client:
        client = visitor()
        response = post_form(client, "/login", "/login", username=user, password=f"{user}-demo")
        assert response.status_code == 302, response.text
        assert response.headers["Location"] == "/"
        return client

    return sign_in


@pytest.fixture(name="subscribers")
def _subscribers() -> t.Iterator[list[Subscriber]]:
    """Streams to close at the end of the test."""
    subs: list[Subscriber] = []
    yield subs
    for sub in subs:
        sub.close()


def post_form(client: httpx.Client, page: str, action: str, **fields: str) -> httpx.Response:
    """Submit a form of the app as a browser does: with the CSRF token of the page that shows it."""
    html = client.get(page).text
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, f"no form with a CSRF token on {page}"
    return client.post(action, data={"csrf": found.group(1), **fields})


def open_stream(server: Server, client: httpx.Client, user: str) -> Subscriber:
    """``user``'s stream, opened with ``client``'s session cookie and no token."""
    cookie = {"Cookie": f"session={client.cookies['session']}"}
    return subscribe(f"{server.url}/notify/connection/{user}", headers=cookie)


def streams_on_every_worker(server: Server, client: httpx.Client, user: str) -> list[Subscriber]:
    """One stream of ``user`` on each of the 2 workers (at most SSE_NOTIFY_MAX_STREAMS_PER_USER tries)."""
    return on_every_worker(lambda: open_stream(server, client, user), 2)


def refusal(client: httpx.Client, path: str) -> tuple[int, dict[str, t.Any]]:
    """The status and JSON body of a stream request that must be refused (a 200 is not read)."""
    with client.stream("GET", path) as response:
        if response.status_code == 200:
            return 200, {}
        response.read()
        assert response.headers["Content-Type"] == "application/json"
        return response.status_code, t.cast(dict[str, t.Any], response.json())


def test_a_visitor_not_signed_in_gets_no_stream(
    example: Server, visitor: t.Callable[[], httpx.Client]
) -> None:
    """Without a session, a stream is refused (403 JSON) and the inbox page sends the visitor to sign in."""
    client = visitor()
    status, body = refusal(client, "/notify/connection/alice")
    assert (status, body["error"]) == (403, "forbidden")
    home = client.get("/")
    assert (home.status_code, home.headers["Location"]) == (302, "/login")


def test_a_wrong_password_signs_nobody_in(visitor: t.Callable[[], httpx.Client]) -> None:
    """A wrong password (or an unknown name) gets 401 from the login form and no stream."""
    client = visitor()
    for name, password in [("alice", "bob-demo"), ("mallory", "alice-demo")]:
        response = post_form(client, "/login", "/login", username=name, password=password)
        assert response.status_code == 401
        assert "Wrong name or password." in response.text
    status, _ = refusal(client, "/notify/connection/alice")
    assert status == 403


def test_a_session_reads_only_its_own_stream_and_inbox(sign_in: SignIn) -> None:
    """Signed in as bob: alice's stream and inbox are 403, bob's own inbox is 200, all without a token."""
    bob = sign_in("bob")
    status, body = refusal(bob, "/notify/connection/alice")
    assert (status, body["error"]) == (403, "forbidden")
    assert bob.get("/notify/users/alice/notices").status_code == 403
    own = bob.get("/notify/users/bob/notices")
    assert own.status_code == 200
    assert own.json()["notices"] == []


def test_a_form_post_without_the_csrf_token_is_refused(sign_in: SignIn) -> None:
    """The app's forms need the session's CSRF token: without it, sending and signing out get 400."""
    alice = sign_in("alice")
    assert alice.post("/send", data={"to": "bob", "title": "forged"}).status_code == 400
    assert alice.post("/logout", data={"csrf": "guess"}).status_code == 400
    assert alice.get("/").status_code == 200  # still signed in


def test_a_notice_sent_with_the_form_reaches_every_stream_of_the_recipient(
    example: Server, sign_in: SignIn, subscribers: list[Subscriber]
) -> None:
    """alice sends bob a notice with the form: bob's streams on both workers get it, opened by his session."""
    alice, bob = sign_in("alice"), sign_in("bob")
    subscribers += streams_on_every_worker(example, bob, "bob")
    sent = post_form(alice, "/", "/send", to="bob", title="Lunch?", text="At noon, the usual place.")
    assert (sent.status_code, sent.headers["Location"]) == (302, "/")
    for sub in subscribers:
        notice = json.loads(sub.next("notice").data)
        assert notice["user_id"] == "bob"
        assert notice["data"] == {"title": "Lunch?", "text": "At noon, the usual place.", "from": "alice"}


def test_the_page_says_who_is_online(example: Server, sign_in: SignIn, subscribers: list[Subscriber]) -> None:
    """alice's page lists bob as online with his streams on both workers (presence), carol as offline."""
    alice, bob = sign_in("alice"), sign_in("bob")
    subscribers += streams_on_every_worker(example, bob, "bob")
    streams = len(subscribers)

    def says() -> str:
        return alice.get("/").text

    wait_for(
        lambda: f"online ({streams} streams)" in says(), 10, f"alice's page to show bob's {streams} streams"
    )
    page = says()
    assert re.search(r'data-user="bob">bob:\s+online \(\d+ streams\)', page)
    assert re.search(r'data-user="carol">carol:\s+offline', page)


def test_signing_out_kicks_the_users_streams(
    example: Server, sign_in: SignIn, subscribers: list[Subscriber]
) -> None:
    """bob signs out: his streams on both workers get close "kicked" and end; alice's stream stays live."""
    alice, bob = sign_in("alice"), sign_in("bob")
    bobs = streams_on_every_worker(example, bob, "bob")
    alices = open_stream(example, alice, "alice")
    subscribers += [*bobs, alices]
    out = post_form(bob, "/", "/logout")
    assert (out.status_code, out.headers["Location"]) == (302, "/login")
    for sub in bobs:
        assert json.loads(sub.next("close").data) == {"reason": "kicked"}
        assert sub.ended.wait(10), "a kicked stream must end"
    status, _ = refusal(bob, "/notify/connection/bob")  # the session is gone too
    assert status == 403
    carol = sign_in("carol")
    post_form(carol, "/", "/send", to="alice", title="still there?")
    assert json.loads(alices.next("notice").data)["data"]["title"] == "still there?"
    assert not alices.ended.is_set()


def test_the_library_lives_under_notify_only(make_server: t.Callable[..., Server]) -> None:
    """Run as its README says: sse_notify answers under /notify (openapi, client, health), not at the root."""
    server = make_server(workers=1, app="", config=CONF, health_path=HEALTH)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        document = client.get("/notify/openapi.json")
        assert document.status_code == 200
        assert "/notify/connection/{user_id}" in document.json()["paths"]
        script = client.get("/notify/sse-notify.js")
        assert script.status_code == 200
        assert script.headers["Content-Type"].startswith("text/javascript")
        for path in ["/openapi.json", "/sse-notify.js", "/healthz", "/connection/alice"]:
            assert client.get(path).status_code == 404, path  # the host app's own 404


@pytest.mark.browser
def test_the_page_shows_notices_live_and_signing_out_closes_every_tab(
    example: Server, context: BrowserContext, sign_in: SignIn
) -> None:
    """Chromium: bob signs in, alice's notice shows up live, he marks it read; signing out ends both tabs."""
    errors: list[str] = []

    def tab() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(example.url + "/")
        return page

    first = tab()
    first.fill("#username", "bob")
    first.fill("#password", "bob-demo")
    first.click("#login button")
    expect(first.locator("#status")).to_have_text("live", timeout=TIMEOUT)

    post_form(sign_in("alice"), "/", "/send", to="bob", title="Lunch?", text="At noon.")
    expect(first.locator("#notices li.unread .title")).to_have_text(["Lunch?"], timeout=TIMEOUT)
    expect(first.locator("#unread")).to_have_text("1", timeout=TIMEOUT)
    first.locator("#notices li").get_by_role("button", name="Mark read").click()
    expect(first.locator("#notices li.read .title")).to_have_text(["Lunch?"], timeout=TIMEOUT)
    expect(first.locator("#unread")).to_be_hidden(timeout=TIMEOUT)

    second = tab()
    expect(second.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    second.click("#logout")
    expect(second).to_have_url(example.url + "/login", timeout=TIMEOUT)
    expect(first).to_have_url(example.url + "/login", timeout=TIMEOUT)  # kicked, so it went too
    expect(first.locator("#login")).to_be_visible(timeout=TIMEOUT)
    assert not errors, f"JavaScript errors on the page: {errors}"
