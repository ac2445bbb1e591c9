"""What a request may hold: bodies, user ids, and text that tries to inject into the event stream."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient

from sse_notify.config import DEFAULTS

from .sse_client import Subscriber, named
from .support import (
    AUTH,
    Server,
    as_json,
    assert_json_error,
    delivered,
    embed,
    head,
    open_stream,
    standalone_app,
    token_for,
)

# -- 9. bodies and user ids --------------------------------------------------

BIG = "x" * DEFAULTS["SSE_NOTIFY_MAX_BODY"]


#: The publish endpoint of alice, and a body sent as JSON text as it is.
ALICE = "/users/alice/notices"


LONG_NAN = '{"id": 123456789012345678901234567890, "n": NaN}'
TOO_MANY = [{"user_id": "a", "data": {"pad": BIG}}] * 64
ONE_TOO_BIG = [{"user_id": "a", "data": {}}, {"user_id": "b", "data": {"pad": BIG}}]
MAX_BATCH_BODY = str(DEFAULTS["SSE_NOTIFY_MAX_BATCH_BODY"])


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "error", "detail"),
    [
        pytest.param(ALICE, {"data": "x"}, 415, "unsupported_media_type", "Content-Type", id="no-type"),
        pytest.param(
            ALICE,
            {"data": "{}", "content_type": "text/plain"},
            415,
            "unsupported_media_type",
            "text/plain",
            id="text-plain",
        ),
        pytest.param(
            ALICE, as_json("{x"), 400, "bad_request", "not valid JSON: unexpected character", id="not-json"
        ),
        pytest.param(
            "/broadcast", as_json(b'{"a": "\xff"}'), 400, "bad_request", "not valid JSON", id="not-utf8"
        ),
        pytest.param(ALICE, as_json('{"n": Infinity}'), 400, "bad_request", "not valid JSON", id="infinity"),
        pytest.param(
            ALICE, as_json(LONG_NAN), 400, "bad_request", "NaN is not JSON", id="nan-beside-a-long-int"
        ),
        pytest.param(ALICE, {"json": [1]}, 400, "invalid_notice", "JSON object", id="list"),
        pytest.param(ALICE, {"json": 5}, 400, "invalid_notice", "JSON object", id="number"),
        pytest.param(ALICE, as_json("null"), 400, "invalid_notice", "JSON object", id="null"),
        pytest.param(
            "/broadcast", {"json": "text"}, 400, "invalid_notice", "JSON object", id="broadcast-string"
        ),
        pytest.param(
            ALICE, {"json": {"pad": BIG}}, 413, "payload_too_large", "65536 bytes", id="over-max-body"
        ),
        pytest.param(
            "/broadcast", {"json": {"pad": BIG}}, 413, "payload_too_large", "65536", id="broadcast-over"
        ),
        pytest.param(
            "/notices", {"json": TOO_MANY}, 413, "payload_too_large", MAX_BATCH_BODY, id="batch-over"
        ),
        pytest.param("/notices", {"json": ONE_TOO_BIG}, 413, "payload_too_large", "notice 1", id="item-over"),
        pytest.param(
            "/notices", {"json": [{"user_id": "!", "data": {}}]}, 400, "invalid_user_id", "'!'", id="ctl"
        ),
    ],
)
def test_bad_bodies(
    client: FlaskClient, app: Flask, path: str, kwargs: dict[str, t.Any], status: int, error: str, detail: str
) -> None:
    """A body that is not JSON, not an object, or too large is refused with a JSON error; nothing stored."""
    body = assert_json_error(client.post(path, **kwargs), status, error)
    assert detail in body["detail"]
    assert head(app) == 0


def test_a_body_at_the_limit_is_accepted(client: FlaskClient) -> None:
    """A notice whose body is exactly MAX_BODY bytes is accepted (the limit is inclusive)."""
    data = {"pad": ""}
    data["pad"] = "x" * (DEFAULTS["SSE_NOTIFY_MAX_BODY"] - len(json.dumps(data, separators=(",", ":"))))
    body = json.dumps(data, separators=(",", ":"))
    assert len(body) == DEFAULTS["SSE_NOTIFY_MAX_BODY"]
    response = client.post("/users/alice/notices", data=body, content_type="application/json")
    assert response.status_code == 201


def _chunked(first: bytes, filler: bytes, count: int) -> t.Iterator[bytes]:
    yield first
    for _ in range(count):
        yield filler


@pytest.mark.server
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("first", "filler"),
    [
        pytest.param(b'{"a": 1}', b" " * 1024, id="json-then-spaces"),
        pytest.param(b'{"a": "', b"x" * 1024, id="string"),
    ],
)
def test_chunked_body_over_the_limit_is_413(
    make_server: t.Callable[..., Server], first: bytes, filler: bytes
) -> None:
    """A body sent chunked (no Content-Length) over MAX_BODY is refused with 413 too."""
    server = make_server()
    response = httpx.post(
        f"{server.url}/users/alice/notices",
        content=_chunked(first, filler, 200),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413, response.text[:200]


def test_the_apps_max_content_length_holds_on_publishes() -> None:
    """Flask's MAX_CONTENT_LENGTH, below the server's own limit, refuses a larger publish with 413."""
    client = standalone_app("memory://", MAX_CONTENT_LENGTH=16).test_client()
    assert client.post("/users/alice/notices", json={"a": 1}, headers=AUTH).status_code == 201
    answer = client.post("/users/alice/notices", json={"title": "longer than sixteen"}, headers=AUTH)
    assert answer.status_code == 413
    assert answer.get_json()["error"] == "request_entity_too_large"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/users/alice/notices", {"pad": BIG}, id="notice"),
        pytest.param("/notices", [{"user_id": "a", "data": {"pad": BIG}}] * 64, id="batch"),
    ],
)
def test_too_large_has_the_documented_code(client: FlaskClient, path: str, body: t.Any) -> None:
    """Every 413 carries the documented error code payload_too_large."""
    assert_json_error(client.post(path, json=body), 413, "payload_too_large")


EMBEDDED_ERRORS = [
    pytest.param("get", f"/connection/al%20ice?token={token_for('al ice')}", {}, 400, id="stream-bad-id"),
    pytest.param("post", "/users/al%20ice/notices", {"json": {}}, 400, id="publish-bad-id"),
    pytest.param("post", "/users/alice/notices", {"data": "x"}, 415, id="not-json-type"),
    pytest.param(
        "post", "/users/alice/notices", {"data": "{x", "content_type": "application/json"}, 400, id="bad-json"
    ),
    pytest.param("post", "/users/alice/notices", {"json": {"pad": BIG}}, 413, id="too-large"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), EMBEDDED_ERRORS)
def test_embedded_errors_are_json(
    tmp_path: Path, method: str, path: str, kwargs: dict[str, t.Any], status: int
) -> None:
    """Mounted in a host app (SSENotify(app)), the extension's own refusals are still JSON errors."""
    client = embed(tmp_path / "instance").test_client()
    response = getattr(client, method)(path, headers=AUTH if method == "post" else {}, **kwargs)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json", response.data[:80]


def test_a_lone_surrogate_is_a_400(client: FlaskClient, app: Flask) -> None:
    """A body with a lone UTF-16 surrogate escape is a 400 that names it, not a server error."""
    response = client.post("/users/alice/notices", data='{"a": "\\ud800"}', content_type="application/json")
    assert "surrogate" in assert_json_error(response, 400, "bad_request")["detail"]
    long_number = '{"n": 123456789012345678901234567890, "a": "\\ud800"}'  # the standard library's path
    response = client.post("/users/alice/notices", data=long_number, content_type="application/json")
    assert "surrogate" in assert_json_error(response, 400, "invalid_notice")["detail"]
    assert head(app) == 0


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("get", "/nowhere", 404, "not_found"),
        ("post", "/nowhere", 404, "not_found"),
        ("put", "/users/alice/notices", 405, "method_not_allowed"),
        ("delete", "/broadcast", 405, "method_not_allowed"),
        ("post", "/connection/alice", 405, "method_not_allowed"),
    ],
)
def test_404_and_405_are_json(client: FlaskClient, method: str, path: str, status: int, error: str) -> None:
    """Unknown URLs and wrong methods answer JSON errors."""
    assert_json_error(getattr(client, method)(path), status, error)


def test_405_keeps_the_allow_header(client: FlaskClient) -> None:
    """A 405 says which methods are allowed (Allow header), as HTTP requires."""
    response = client.put("/users/alice/notices")
    assert response.status_code == 405
    assert set(response.headers.get("Allow", "").replace(" ", "").split(",")) >= {"GET", "POST"}


BAD_IDS = [
    pytest.param("", 404, id="empty"),
    pytest.param("a" * 129, 400, id="too-long"),
    pytest.param("a%2Fb", 404, id="slash-encoded"),
    pytest.param("al%20ice", 400, id="space"),
    pytest.param("%C3%A5lice", 400, id="unicode"),
    pytest.param("a%0D%0Aevent:%20x", 400, id="crlf"),
    pytest.param("a%0Ab", 400, id="lf"),
    pytest.param("a%0Db", 400, id="cr"),
    pytest.param("a%00b", 400, id="nul"),
    pytest.param("a%09b", 400, id="tab"),
    pytest.param("a%E2%80%A8b", 400, id="u2028"),
    pytest.param("a;b", 400, id="semicolon"),
    pytest.param("!kick", 400, id="control-id"),
]


def _error_for(status: int) -> str:
    return {400: "invalid_user_id", 404: "not_found"}[status]


@pytest.mark.parametrize(("user_id", "status"), BAD_IDS)
def test_bad_user_id_stream(reader: FlaskClient, user_id: str, status: int) -> None:
    """A bad user id in a stream URL is a JSON 400/404, even with a token signed for it."""
    from urllib.parse import unquote

    token = token_for(unquote(user_id) or "x")
    assert_json_error(reader.get(f"/connection/{user_id}?token={token}"), status, _error_for(status))


@pytest.mark.parametrize(("user_id", "status"), BAD_IDS)
@pytest.mark.parametrize("action", ["notices", "tokens", "kick"])
def test_bad_user_id_publish(client: FlaskClient, app: Flask, user_id: str, status: int, action: str) -> None:
    """A bad user id in a write URL is a JSON 400/404 and nothing is stored (no token issued)."""
    response = client.post(f"/users/{user_id}/{action}", json={"n": 1})
    assert_json_error(response, status, _error_for(status))
    assert head(app) == 0


def test_longest_user_id_is_accepted(client: FlaskClient, reader: FlaskClient) -> None:
    """A 128-character user id (the limit) can be published to and streamed."""
    user = "a" * 128
    assert client.post(f"/users/{user}/notices", json={"n": 1}).status_code == 201
    response, chunks = open_stream(reader, f"/connection/{user}?token={token_for(user)}")
    assert response.status_code == 200
    assert next(chunks).startswith(b": connected")
    response.close()


# -- 10. injection (real gunicorn, read by httpx-sse) ------------------------

NASTY = [
    "\r",
    "\n",
    "\r\n",
    "\n\n",
    "\r\r",
    "event: x",
    "id: 99",
    "retry: 1",
    "data: y",
    ":",
    ": comment",
    "\u2028",
    "\u2029",
    "\x85",
    "\x00",
    "\ufeff",
    "a\n\nevent: evil\ndata: pwned\n\n",
    "\r\nid: 1\r\n\r\nretry: 0\r\n\r\n",
    "",
]


@pytest.mark.server
@pytest.mark.timeout(60)
def test_no_injection_into_the_stream(make_server: t.Callable[..., Server]) -> None:
    """Notices full of CR, LF, field names, ':' and U+2028 arrive as one notice each, data and id intact."""
    server = make_server()
    users = ("event:x", "id:99")
    subs = {user: Subscriber(server.stream_url(user)) for user in users}
    for sub in subs.values():
        assert sub.opened.wait(10)
    sent: dict[str, list[dict[str, t.Any]]] = {user: [] for user in users}
    for n, text in enumerate(NASTY):
        data = {"v": text, text: text, "nested": [text, {"k": text}], "n": n}
        notice = server.publish(users[n % 2], data)
        assert notice["data"] == data
        sent[users[n % 2]].append(notice)
    everyone = server.broadcast({text: text for text in NASTY})
    batch = delivered(server.post("/notices", [{"user_id": user, "data": {"all": NASTY}} for user in users]))
    for user, notice in zip(users, batch, strict=True):
        sent[user] += [everyone, notice]
    for user, sub in subs.items():
        got = sub.notices(len(sent[user]), timeout=10)
        assert [e.id for e in got] == [str(n["id"]) for n in sent[user]]
        assert [json.loads(e.data) for e in got] == sent[user]
        sub.nothing(1.5, event="notice")
        events = [e.event for e in named(sub.seen)]
        assert events == ["snapshot"] + ["notice"] * len(sent[user]), sub.seen
        assert named(sub.rest(0) if sub.ended.is_set() else list(sub.events.queue)) == [], "an extra event"
        assert sub.last_event_id == str(sent[user][-1]["id"])
        sub.close()
