"""The stream route's fast path (sse_notify/fastpath.py): Flask's answers, taken only when nothing differs."""

from __future__ import annotations

import re
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask, g, request_started
from werkzeug.test import Client

from sse_notify import create_app
from sse_notify.auth import issue_token

from .support import SECRET, standalone_app, token_for


def make_app(tmp_path: Path) -> Flask:
    """The standalone app on a SQLite store of its own."""
    return standalone_app(f"sqlite:///{tmp_path}/notices.sqlite3")


def count_flask_dispatches(app: Flask) -> list[str]:
    """Record every request that went through Flask's dispatch (the slow path)."""
    seen: list[str] = []
    dispatch = app.full_dispatch_request

    def counted() -> t.Any:
        from flask import request

        seen.append(request.path)
        return dispatch()

    app.full_dispatch_request = counted  # type: ignore[method-assign]
    return seen


def unretried(first: bytes) -> bytes:
    """A stream's first bytes with its ``retry:`` value (random: spread per stream) as 0."""
    return re.sub(rb"(?m)^retry: \d+$", b"retry: 0", first)


def first_bytes(app: Flask, url: str, **kw: t.Any) -> tuple[int, list[tuple[str, str]], bytes]:
    response = app.test_client().get(url, buffered=False, **kw)
    try:
        first = unretried(next(iter(response.response))) if response.status_code == 200 else response.data
        return response.status_code, sorted(response.headers.items()), first
    finally:
        response.close()


def test_streams_skip_flask_and_answer_as_flask_would(tmp_path: Path) -> None:
    """A stream skips Flask's dispatch, with the same status, headers and first bytes as through Flask."""
    fast = make_app(tmp_path / "fast")
    slow = make_app(tmp_path / "slow")
    slow.before_request(lambda: None)  # any hook sends streams through Flask
    fast_seen, slow_seen = count_flask_dispatches(fast), count_flask_dispatches(slow)
    for query in ("", "&last_event_id=0"):
        url = f"/connection/alice?token={token_for('alice')}{query}"
        assert first_bytes(fast, url) == first_bytes(slow, url)
    assert fast_seen == []
    assert slow_seen == ["/connection/alice"] * 2


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        ("/connection/alice", {}, 401),
        ("/connection/alice?token=forged", {}, 401),
        ("/connection/alice?token={bob}", {}, 403),
        ("/connection/al%20ice?token={alice}", {}, 400),
    ],
)
def test_refused_streams_get_flasks_json_errors(
    tmp_path: Path, url: str, headers: dict[str, str], status: int
) -> None:
    """A stream the checks refuse goes to Flask, which answers with its JSON error."""
    app = make_app(tmp_path)
    seen = count_flask_dispatches(app)
    response = app.test_client().get(
        url.format(alice=token_for("alice"), bob=token_for("bob")), headers=headers
    )
    assert response.status_code == status
    assert set(response.get_json()) == {"error", "detail"}
    assert len(seen) == 1


def test_token_in_header_or_cookie_takes_the_fast_path(tmp_path: Path) -> None:
    """Authorization: Bearer and the token cookie open a stream on the fast path too."""
    app = make_app(tmp_path)
    seen = count_flask_dispatches(app)
    client = app.test_client()
    bearer = client.get(
        "/connection/alice", headers={"Authorization": f"Bearer {token_for('alice')}"}, buffered=False
    )
    assert bearer.status_code == 200
    bearer.close()
    client.set_cookie("sse_notify_token", token_for("alice"))
    cookie = client.get("/connection/alice", buffered=False)
    assert cookie.status_code == 200
    cookie.close()
    assert seen == []


def test_a_hosts_hooks_and_signals_still_see_streams(tmp_path: Path) -> None:
    """With a before_request hook, or a request_started receiver, streams go through Flask and are seen."""
    app = make_app(tmp_path)
    hooked: list[str] = []

    @app.before_request
    def _mark() -> None:
        g.marked = True
        hooked.append("hook")

    status, _, _ = first_bytes(app, f"/connection/alice?token={token_for('alice')}")
    assert (status, hooked) == (200, ["hook"])

    other = make_app(tmp_path / "other")
    started: list[str] = []

    def on_start(sender: Flask, **extra: t.Any) -> None:
        started.append("started")

    with request_started.connected_to(on_start, other):
        status, _, _ = first_bytes(other, f"/connection/alice?token={token_for('alice')}")
    assert (status, started) == (200, ["started"])


# -- the differential test: one matrix of settings x requests, through both paths ------------

#: App settings that act on a request in Flask or in sse_notify (each row: the config to add).
SETTINGS: dict[str, dict[str, t.Any]] = {
    "defaults": {},
    "trusted-hosts": {"TRUSTED_HOSTS": ["good.example", ".corp.example"]},
    "server-name": {"SERVER_NAME": "good.example:8000"},
    "url-prefix": {"SSE_NOTIFY_URL_PREFIX": "/notify"},
    "auth-none": {"SSE_NOTIFY_AUTH": "none"},
    "no-snapshot": {"SSE_NOTIFY_SNAPSHOT": False},
    "own-cookie": {"SSE_NOTIFY_TOKEN_COOKIE": "my_token"},
    "max-content-length": {"MAX_CONTENT_LENGTH": 8},
    "application-root": {"APPLICATION_ROOT": "/app", "PREFERRED_URL_SCHEME": "https"},
    "cors": {"SSE_NOTIFY_CORS_ORIGINS": ["https://app.example"]},
}


def _numbers(n: int) -> dict[str, int]:
    return {"n": n}


def _anything(anything: str) -> dict[str, str]:
    return {"path": anything}


#: What a host may change on the app itself, each beside the defaults (the fast path's routing shortcut).
CHANGES: dict[str, t.Callable[[Flask], None]] = {
    "a host rule under the stream path": lambda app: app.add_url_rule(
        "/connection/<int:n>", "numbers", _numbers
    ),
    "a catch-all host rule": lambda app: app.add_url_rule("/<path:anything>", "anything", _anything),
    "subdomain matching": lambda app: setattr(app, "subdomain_matching", True),
}


class Request(t.NamedTuple):
    """One request of the matrix: ``path`` is under the app's prefix unless it starts with ``!``."""

    name: str
    method: str = "GET"
    path: str = "/connection/alice?token={alice}"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


REQUESTS = [
    Request("token in the query"),
    Request("token as bearer", path="/connection/alice", headers=(("Authorization", "Bearer {alice}"),)),
    Request("no token", path="/connection/alice"),
    Request("token in the cookie", path="/connection/alice", headers=(("Cookie", "{cookie}={alice}"),)),
    Request("forged token", path="/connection/alice?token=forged.token.here"),
    Request("token in the app's cookie", path="/connection/alice", headers=(("Cookie", "my_token={alice}"),)),
    Request("token of another user", path="/connection/alice?token={bob}"),
    Request("cookie header that is odd", headers=(("Cookie", "a=b; ;; =c; {cookie}"),)),
    Request("expired token", path="/connection/alice?token={expired}"),
    Request("basic auth and a query token", headers=(("Authorization", "Basic YWxpY2U6cHc="),)),
    Request("two tokens, a bad one first", path="/connection/alice?token=bad&token={alice}"),
    Request("resume", headers=(("Last-Event-ID", "0"),)),
    Request("a good and a bad token", path="/connection/alice?token={alice}&token=bad"),
    Request("resume from garbage", headers=(("Last-Event-ID", "not-a-cursor"),)),
    Request("token percent-encoded", path="/connection/alice?token={alice_quoted}"),
    Request("resume from a huge cursor", headers=(("Last-Event-ID", "9" * 40),)),
    Request("resume from the query", path="/connection/alice?token={alice}&last_event_id=0"),
    Request("trusted host", headers=(("Host", "good.example"),)),
    Request("bad user id", path="/connection/al%20ice?token={alice}"),
    Request("trusted host with its port", headers=(("Host", "good.example:8000"),)),
    Request("user id too long", path="/connection/" + "a" * 129 + "?token={alice}"),
    Request("trusted subdomain", headers=(("Host", "a.corp.example"),)),
    Request("slash in the user id", path="/connection/al%2Fice?token={alice}"),
    Request("other host", headers=(("Host", "evil.example"),)),
    Request("trailing slash", path="/connection/alice/?token={alice}"),
    Request("host with a bad port", headers=(("Host", "good.example:x"),)),
    Request("double slash", path="!//connection/alice?token={alice}"),
    Request("IPv6 host", headers=(("Host", "[::1]:8000"),)),
    Request("slashes inside", path="/connection//alice?token={alice}"),
    Request("HEAD", method="HEAD"),
    Request("without the prefix", path="!/connection/alice?token={alice}"),
    Request("POST", method="POST"),
    Request("with a prefix not set", path="!/notify/connection/alice?token={alice}"),
    Request("a body on a GET", headers=(("Content-Type", "text/plain"),), body=b"0123456789abcdef"),
    Request(
        "header wins over the query",
        path="/connection/alice?token={alice}&last_event_id=x",
        headers=(("Last-Event-ID", "0"),),
    ),
    Request(
        "OPTIONS",
        method="OPTIONS",
        headers=(("Origin", "https://app.example"), ("Access-Control-Request-Method", "GET")),
    ),
    Request("cross-origin GET", headers=(("Origin", "https://app.example"),)),
    Request("a number as the user id", path="/connection/42?token={n42}"),
    Request("a user id that is not ASCII", path="/connection/%C3%A9l%C3%A8ve?token={alice}"),
    Request("a WebSocket upgrade", headers=(("Connection", "Upgrade"), ("Upgrade", "websocket"))),
]


def _first_bytes(client: Client, request: Request, prefix: str, values: dict[str, str]) -> tuple[t.Any, ...]:
    """Status, headers and body (a stream's first chunk) of ``request``; a ``retry:`` value (random) as 0."""
    path = request.path.format(**values)
    path = path[1:] if path.startswith("!") else prefix + path
    headers = [(k, v.format(**values)) for k, v in request.headers]
    host = dict(headers).pop("Host", "localhost")
    headers = [(k, v) for k, v in headers if k != "Host"]
    response = client.open(
        path,
        method=request.method,
        headers=headers,
        data=request.body,
        buffered=False,
        environ_overrides={"HTTP_HOST": host},
    )
    try:
        if response.headers.get("Content-Type") == "text/event-stream":
            body = unretried(next(iter(response.response), b""))
        else:
            body = response.get_data()
        return response.status, sorted(response.headers.items()), body
    finally:
        response.close()


@pytest.mark.parametrize("setting", [*SETTINGS, *CHANGES])
def test_the_fast_path_answers_every_request_as_flask_does(tmp_path: Path, setting: str) -> None:
    """Each request of the matrix gets the same status, headers and body with and without the fast path."""
    app = make_app(tmp_path)
    app = create_app({**app.config, **SETTINGS.get(setting, {})})
    if setting in CHANGES:
        CHANGES[setting](app)
    flask_seen = count_flask_dispatches(app)
    fast = Client(app.wsgi_app)
    flask = Client(app.wsgi_app.__wrapped__)  # type: ignore[attr-defined]
    expired = issue_token(SECRET, "alice", 0.001)
    time.sleep(0.01)
    alice = token_for("alice")
    values = {
        "alice": alice,
        "alice_quoted": alice.replace(".", "%2E").replace("-", "%2D"),
        "bob": token_for("bob"),
        "n42": token_for("42"),
        "expired": expired,
        "cookie": app.config["SSE_NOTIFY_TOKEN_COOKIE"],
    }
    prefix = app.config["SSE_NOTIFY_URL_PREFIX"]
    differ = {}
    for request in REQUESTS:
        through_flask = _first_bytes(flask, request, prefix, values)
        flask_seen.clear()
        through_fast = _first_bytes(fast, request, prefix, values)
        if through_fast != through_flask:
            differ[request.name] = (through_flask, through_fast)
        if through_fast[0] == "200 OK" and setting == "defaults" and request.method == "GET":
            assert flask_seen == [], (
                f"{request.name}: a stream the fast path should have served went to Flask"
            )
    assert not differ, differ


def test_an_untrusted_host_gets_flasks_400_on_the_stream_route(tmp_path: Path) -> None:
    """With TRUSTED_HOSTS set, a stream for another Host is refused (400) as every other route refuses it."""
    app = create_app({**make_app(tmp_path).config, "TRUSTED_HOSTS": ["good.example"]})
    client = app.test_client()
    url = f"/connection/alice?token={token_for('alice')}"
    assert client.get(url, base_url="http://evil.example").status_code == 400
    assert client.get("/healthz", base_url="http://evil.example").status_code == 400
    good = client.get(url, base_url="http://good.example", buffered=False)
    assert good.status_code == 200
    good.close()
