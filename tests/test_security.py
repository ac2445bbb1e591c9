"""Issue #3, rule by rule: who may read a stream, who may publish, limits, bodies, injection, logs, CORS.

Rules are numbered as in the issue; each test's docstring says what must hold.
The test client covers request-level rules; real gunicorn covers what only a
running server shows (expiry while open, kick across workers, overload, the wire
format read by httpx-sse, the access log).
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import httpx
import pytest
from flask import Flask, Response, make_response, request, session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from sse_notify import ConfigError, notify
from sse_notify.auth import issue_token, verify_token
from sse_notify.config import DEFAULTS
from sse_notify.errors import TokenExpired
from sse_notify.extension import SSENotify, set_token_cookie
from sse_notify.service import get_state

from .sse_client import Subscriber, decode, named, on_every_worker, retry_of, subscribe
from .support import AUTH, PUBLISH_KEY, SECRET, Server, as_json, host_app, standalone_app, token_for, wait_for

INSTRUMENTED = "tests.instrumented:app"
COOKIE = DEFAULTS["SSE_NOTIFY_TOKEN_COOKIE"]
USERS = ("alice", "bob", "carol")
KEYS = ("k1", "k2")


# -- helpers -----------------------------------------------------------------


def embed(instance: Path, **config: t.Any) -> Flask:
    """``SSENotify(app)`` in a bare Flask app whose instance folder is ``instance`` (not the repository's)."""
    app = host_app(instance, **config)
    SSENotify(app)
    return app


def head(app: Flask) -> int:
    """The store's newest cursor (0: nothing was ever stored)."""
    return get_state(app).broker.head()


def assert_json_error(response: TestResponse | httpx.Response, status: int, error: str) -> dict[str, str]:
    """``response`` is ``status`` with exactly ``{"error": error, "detail": "..."}``; returns the body."""
    # (Never read the body before the status matched: a 200 stream would not end.)
    assert response.status_code == status, (response.status_code, response.headers.get("Content-Type"))
    assert response.headers["Content-Type"] == "application/json"
    body = t.cast(
        dict[str, str],
        json.loads(response.content if isinstance(response, httpx.Response) else response.data),
    )
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def open_stream(client: FlaskClient, path: str, **kw: t.Any) -> tuple[TestResponse, t.Iterator[bytes]]:
    """GET a stream without buffering: the response and an iterator over its chunks."""
    response = client.get(path, buffered=False, **kw)
    return response, iter(response.response)


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(name="reader_app", scope="module")
def _reader_app() -> Flask:
    """One app for the token matrix (every refused stream leaves nothing behind)."""
    return standalone_app()


@pytest.fixture(name="reader")
def _reader(reader_app: Flask) -> t.Iterator[FlaskClient]:
    """A test client with no credentials at all (a browser's EventSource)."""
    yield reader_app.test_client()
    assert get_state(reader_app).hub.stats()["streams"] == 0, "a stream was left open"


@pytest.fixture(name="expired", scope="module")
def _expired() -> dict[str, str]:
    """A token per user that has expired (ttl 1 s, waited out once for the module)."""
    tokens = {user: token_for(user, ttl=1) for user in USERS}

    def all_expired() -> bool:
        try:
            verify_token(SECRET, tokens["carol"], "carol")
        except TokenExpired:
            return True
        return False

    wait_for(all_expired, 3, "the 1 s tokens to expire", interval=0.05)
    return tokens


@pytest.fixture(name="rotation")
def _rotation() -> Flask:
    """An app with two publish keys configured at once (key rotation)."""
    return standalone_app(SSE_NOTIFY_PUBLISH_KEYS=list(KEYS))


# -- 1. the token matrix -----------------------------------------------------


def _forge(token: str, payload: dict[str, t.Any]) -> str:
    """``token`` with its payload replaced and the old signature kept (what an attacker can do)."""
    _, stamp, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{body.decode()}.{stamp}.{signature}"


def make_token(kind: str, user: str, expired: dict[str, str]) -> str | None:
    """The credential ``kind`` presented on ``user``'s stream."""
    if kind in USERS:
        return token_for(kind)
    return {
        "tampered": _forge(token_for("mallory"), {"u": user, "t": 3600}),
        "extended": _forge(expired[user], {"u": user, "t": 10**9}),
        "expired": expired[user],
        "other-secret": issue_token("some-other-secret", user, 3600),
        "garbage": "not-a-token",
        "none": None,
    }[kind]


def expected(kind: str, user: str) -> tuple[int, str]:
    """Status and error code for credential ``kind`` on ``user``'s stream (200, "" when it opens)."""
    if kind == user:
        return 200, ""
    if kind in USERS:
        return 403, "forbidden"
    return {"expired": (401, "token_expired"), "none": (401, "unauthorized")}.get(
        kind, (401, "invalid_token")
    )


MATRIX = [
    pytest.param(user, kind, carrier, id=f"{user}-{kind}-{carrier}")
    for user in USERS
    for kind in (*USERS, "tampered", "extended", "expired", "other-secret", "garbage", "none")
    for carrier in (("query", "bearer", "cookie") if kind != "none" else ("nothing",))
]


@pytest.mark.parametrize(("user", "kind", "carrier"), MATRIX)
def test_token_matrix(
    reader: FlaskClient, expired: dict[str, str], user: str, kind: str, carrier: str
) -> None:
    """Only the owner's own valid token opens a stream, by any carrier; everything else is a JSON 401/403."""
    token = make_token(kind, user, expired)
    path, headers = f"/connection/{user}", {}
    if carrier == "query":
        path += f"?token={token}"
    elif carrier == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif carrier == "cookie":
        reader.set_cookie(COOKIE, str(token), path="/connection/")
    status, error = expected(kind, user)
    response, chunks = open_stream(reader, path, headers=headers)
    try:
        if status == 200:
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            assert next(chunks).startswith(b": connected\n")
            return
        # Refused before any stream byte: the whole body is the JSON error.
        assert_json_error(response, status, error)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        else:
            assert "WWW-Authenticate" not in response.headers
    finally:
        response.close()


@pytest.mark.parametrize(
    ("stream_of", "status", "error"),
    [
        pytest.param("Alice", 403, "forbidden", id="other-case"),
        pytest.param("alice.", 403, "forbidden", id="suffix"),
        pytest.param("alic", 403, "forbidden", id="prefix"),
        pytest.param("alice%20", 400, "invalid_user_id", id="trailing-space"),
    ],
)
def test_a_token_names_one_exact_user_id(
    reader: FlaskClient, stream_of: str, status: int, error: str
) -> None:
    """alice's token opens no stream whose user id merely resembles "alice"."""
    assert_json_error(reader.get(f"/connection/{stream_of}?token={token_for('alice')}"), status, error)


def test_a_publish_key_is_not_a_connection_token(reader: FlaskClient) -> None:
    """The publish key sent as a stream's bearer token does not open any stream (401 invalid_token)."""
    response = reader.get("/connection/alice", headers=AUTH)
    assert_json_error(response, 401, "invalid_token")


# -- 2. publishers -----------------------------------------------------------

ENDPOINTS = [
    pytest.param("/users/alice/notices", {"n": 1}, 201, id="notices"),
    pytest.param("/broadcast", {"n": 1}, 201, id="broadcast"),
    pytest.param("/notices", [{"user_id": "alice", "data": {"n": 1}}], 201, id="batch"),
    pytest.param("/users/alice/tokens", None, 201, id="tokens"),
    pytest.param("/users/alice/kick", None, 202, id="kick"),
]

REFUSED = [
    pytest.param({}, "", 401, "unauthorized", id="no-key"),
    pytest.param({"Authorization": "Bearer wrong"}, "", 403, "forbidden", id="wrong-key"),
    pytest.param({"Authorization": "Bearer k"}, "", 403, "forbidden", id="prefix-of-a-key"),
    pytest.param({"Authorization": "Bearer k1k2"}, "", 403, "forbidden", id="keys-joined"),
    pytest.param({"Authorization": f"Bearer {token_for('alice')}"}, "", 403, "forbidden", id="stream-token"),
    pytest.param({"Authorization": "Basic k1"}, "", 401, "unauthorized", id="basic-scheme"),
    pytest.param({"Authorization": "k1"}, "", 401, "unauthorized", id="no-scheme"),
    pytest.param({"Authorization": "Bearer "}, "", 401, "unauthorized", id="empty-bearer"),
    pytest.param({}, "?key=k1", 401, "unauthorized", id="key-in-query"),
    pytest.param({}, "?token=k1", 401, "unauthorized", id="key-as-token-param"),
]


@pytest.mark.parametrize(("path", "body", "ok"), ENDPOINTS)
@pytest.mark.parametrize(("headers", "query", "status", "error"), REFUSED)
def test_publisher_refused(
    rotation: Flask,
    path: str,
    body: t.Any,
    ok: int,
    headers: dict[str, str],
    query: str,
    status: int,
    error: str,
) -> None:
    """Each write endpoint: 401 (+ WWW-Authenticate) without a key, 403 with a wrong one; nothing stored."""
    response = rotation.test_client().post(path + query, json=body, headers=headers)
    assert_json_error(response, status, error)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sse_notify"'
    assert head(rotation) == 0, "a refused publish stored something"


@pytest.mark.parametrize(("path", "body", "ok"), ENDPOINTS)
@pytest.mark.parametrize("authorization", ["Bearer k1", "Bearer k2", "bearer k2", "Bearer  k1 "])
def test_publisher_accepted_with_every_configured_key(
    rotation: Flask, path: str, body: t.Any, ok: int, authorization: str
) -> None:
    """Each configured key (rotation: k1 and k2) is accepted by every write endpoint."""
    response = rotation.test_client().post(path, json=body, headers={"Authorization": authorization})
    assert response.status_code == ok, response.data
    if path.endswith("/tokens"):
        assert verify_token(SECRET, response.get_json()["token"], "alice").user_id == "alice"
        assert head(rotation) == 0
    elif path.endswith("/kick"):
        assert response.get_json() == {"user_id": "alice", "kicked": True}
        assert head(rotation) == 0  # a control record: no notice stored
    else:
        assert head(rotation) == 1


# -- 3. secure by default ----------------------------------------------------


def test_first_run_generates_secrets_and_still_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No SECRET_KEY, no publish keys: secrets are generated (0600, shared), and nothing is open to anyone."""
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING, logger="sse_notify.security"):
        app = embed(instance, secure=False)
    assert "development mode" in caplog.text
    assert str(instance) in caplog.text
    secret_file, key_file = instance / "secret_key", instance / "publish_key"
    for path in (secret_file, key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert len(path.read_text().strip()) >= 32
    secret, key = secret_file.read_text().strip(), key_file.read_text().strip()
    assert secret != key
    security = get_state(app).security
    assert (security.secret, security.publish_keys) == (secret, (key,))

    client = app.test_client()
    assert_json_error(client.get("/connection/alice"), 401, "unauthorized")
    assert_json_error(client.get(f"/connection/alice?token={token_for('alice')}"), 401, "invalid_token")
    assert_json_error(client.post("/users/alice/notices", json={"n": 1}), 401, "unauthorized")
    assert_json_error(client.post("/users/alice/notices", json={"n": 1}, headers=AUTH), 403, "forbidden")
    assert head(app) == 0
    # The generated ones work.
    published = client.post("/users/alice/notices", json={"n": 1}, headers={"Authorization": f"Bearer {key}"})
    assert published.status_code == 201
    response, chunks = open_stream(client, f"/connection/alice?token={issue_token(secret, 'alice', 60)}")
    assert response.status_code == 200
    assert next(chunks).startswith(b": connected")
    response.close()

    # Another worker (another app on the same instance folder) uses the same values.
    again = get_state(embed(instance, secure=False)).security
    assert (again.secret, again.publish_keys) == (secret, (key,))
    assert sorted(p.name for p in instance.iterdir()) == ["publish_key", "secret_key"]


RACE = """
import sys, time
from sse_notify.security import instance_secret
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(instance_secret(sys.argv[1], "secret_key"))
"""


def test_workers_starting_at_once_share_one_secret(tmp_path: Path) -> None:
    """Workers making the instance secret at the same moment all end up with the same value."""
    instance = tmp_path / "instance"
    start_at = str(time.time() + 2)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(instance), start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    outs = [process.communicate(timeout=15) for process in processes]
    values = {out.decode().strip() for out, _ in outs}
    assert [process.returncode for process in processes] == [0] * 6, [err.decode() for _, err in outs]
    assert values == {(instance / "secret_key").read_text().strip()}
    assert [p.name for p in instance.iterdir()] == ["secret_key"], "a temporary file was left"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        pytest.param({"SSE_NOTIFY_PUBLISH_KEYS": ["k1"]}, ["FLASK_SECRET_KEY"], id="no-secret"),
        pytest.param({"SECRET_KEY": SECRET}, ["SSE_NOTIFY_PUBLISH_KEYS"], id="no-publish-keys"),
        pytest.param({}, ["FLASK_SECRET_KEY", "SSE_NOTIFY_PUBLISH_KEYS"], id="neither"),
    ],
)
@pytest.mark.parametrize("production", [True, "true"])
def test_production_refuses_to_start_without_real_secrets(
    tmp_path: Path, config: dict[str, t.Any], named: list[str], production: t.Any
) -> None:
    """SSE_NOTIFY_PRODUCTION=true without SECRET_KEY or publish keys is a ConfigError naming what to set."""
    instance = tmp_path / "instance"
    with pytest.raises(ConfigError, match="SSE_NOTIFY_PRODUCTION") as raised:
        embed(instance, secure=False, SSE_NOTIFY_PRODUCTION=production, **config)
    for name in named:
        assert name in str(raised.value)
    assert not (instance / "secret_key").exists()
    assert not (instance / "publish_key").exists()


def test_production_starts_with_real_secrets(tmp_path: Path) -> None:
    """SSE_NOTIFY_PRODUCTION=true with both set starts, generates nothing, and is not in development mode."""
    instance = tmp_path / "instance"
    app = embed(instance, SSE_NOTIFY_PRODUCTION=True)
    assert not get_state(app).security.development
    assert not (instance / "secret_key").exists()
    assert not (instance / "publish_key").exists()


def test_auth_none_opens_everything_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SSE_NOTIFY_AUTH=none: anyone reads and publishes, and a loud warning is logged at start."""
    with caplog.at_level(logging.WARNING, logger="sse_notify.security"):
        app = embed(tmp_path / "instance", SSE_NOTIFY_AUTH="none")
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "authentication is OFF" in r.message
    ]
    assert warnings, caplog.text
    client = app.test_client()
    assert client.post("/users/alice/notices", json={"n": 1}).status_code == 201
    assert client.post("/users/alice/kick").status_code == 202
    response, chunks = open_stream(client, "/connection/alice")
    assert response.status_code == 200
    assert next(chunks).startswith(b": connected")
    response.close()


# -- 4. the authorize hook ---------------------------------------------------


def login_app(instance: Path, style: str, calls: list[str], **config: t.Any) -> Flask:
    """A host app with its own login (the session) and an ``authorize`` hook that uses it."""
    app = host_app(instance, **config)

    def authorize(user_id: str) -> bool | None:
        calls.append(user_id)
        who = session.get("user")
        return None if who is None else who == user_id

    if style == "argument":
        SSENotify(app, authorize=authorize)
    else:
        extension = SSENotify()
        extension.authorize(authorize)
        extension.init_app(app)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        session["user"] = user_id
        return "ok"

    return app


@pytest.mark.parametrize("style", ["argument", "decorator"])
@pytest.mark.parametrize(
    ("login", "token_of", "status", "error"),
    [
        pytest.param("alice", None, 200, "", id="True-opens-without-a-token"),
        pytest.param("alice", "bob", 200, "", id="True-ignores-a-wrong-token"),
        pytest.param("bob", None, 403, "forbidden", id="False-refuses"),
        pytest.param("bob", "alice", 403, "forbidden", id="False-beats-a-valid-token"),
        pytest.param(None, "alice", 200, "", id="None-valid-token"),
        pytest.param(None, None, 401, "unauthorized", id="None-no-token"),
        pytest.param(None, "bob", 403, "forbidden", id="None-other-users-token"),
    ],
)
def test_authorize_hook(
    tmp_path: Path, style: str, login: str | None, token_of: str | None, status: int, error: str
) -> None:
    """authorize(user_id): True opens the stream, False refuses it (403), None leaves it to tokens."""
    calls: list[str] = []
    client = login_app(tmp_path / "instance", style, calls).test_client()
    if login:
        assert client.post(f"/login/{login}").status_code == 200
    query = f"?token={token_for(token_of)}" if token_of else ""
    response, chunks = open_stream(client, f"/connection/alice{query}")
    try:
        if status == 200:
            assert response.status_code == 200
            assert next(chunks).startswith(b": connected")
        else:
            assert_json_error(response, status, error)
    finally:
        response.close()
    assert calls == ["alice"]


# -- 5. cookie login ---------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/notify"])
def test_cookie_login(tmp_path: Path, prefix: str) -> None:
    """set_token_cookie: an HttpOnly, SameSite=Lax, Secure cookie for /connection/ that opens the stream."""
    app = host_app(tmp_path / "instance")
    SSENotify(app, url_prefix=prefix)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> Response:
        return set_token_cookie(make_response("ok"), user_id)

    @app.get("/elsewhere")
    def elsewhere() -> str:
        return "cookie" if COOKIE in request.cookies else "no cookie"

    client = app.test_client()
    response = client.post("/login/alice", base_url="https://localhost")
    [header] = response.headers.getlist("Set-Cookie")
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes, header
    cookie = client.get_cookie(COOKIE, path=f"{prefix}/connection/")
    assert cookie is not None, header
    assert cookie.http_only
    assert cookie.secure
    assert cookie.same_site == "Lax"
    assert cookie.path == f"{prefix}/connection/"
    assert cookie.max_age == DEFAULTS["SSE_NOTIFY_TOKEN_TTL"]
    assert verify_token(SECRET, cookie.value, "alice").user_id == "alice"

    stream, chunks = open_stream(client, f"{prefix}/connection/alice", base_url="https://localhost")
    assert stream.status_code == 200
    assert next(chunks).startswith(b": connected")
    stream.close()
    assert_json_error(client.get(f"{prefix}/connection/bob", base_url="https://localhost"), 403, "forbidden")
    # Scoped to the stream URLs: other requests do not carry it.
    assert client.get("/elsewhere", base_url="https://localhost").data == b"no cookie"


# -- 6. a token that expires while its stream is open (real gunicorn) ---------


@pytest.mark.server
@pytest.mark.timeout(60)
def test_token_expiry_closes_the_open_stream(make_server: t.Callable[..., Server]) -> None:
    """When its token expires an open stream gets close {"reason": "token_expired"} and ends; then 401."""
    server = make_server()
    token = token_for("tess", ttl=2)
    expires_at = verify_token(SECRET, token, "tess").expires_at
    url = f"{server.url}/connection/tess?token={token}"
    stream = subscribe(url)
    sent = server.publish("tess", {"n": 1})
    assert stream.next("notice", timeout=5).id == str(sent["id"])
    close = stream.next("close", timeout=max(0.0, expires_at - time.time()) + 5)
    closed_at = time.time()
    assert json.loads(close.data) == {"reason": "token_expired"}
    assert closed_at >= expires_at - 0.5, "closed before the token expired"
    rest = stream.rest(timeout=3)
    assert time.time() < expires_at + 5, "the stream did not end within a few seconds of the expiry"
    assert named(rest) == [], rest
    assert retry_of(rest) is not None
    stream.close()
    assert_json_error(httpx.get(url, timeout=5), 401, "token_expired")


# -- 7. kick across workers (real gunicorn, 2 workers) -----------------------


@pytest.mark.server
@pytest.mark.timeout(60)
def test_kick_closes_every_stream_on_every_worker(make_server: t.Callable[..., Server]) -> None:
    """POST /users/alice/kick: 202; alice's streams on every worker get close {"reason": "kicked"} and end."""
    server = make_server(workers=2, app=INSTRUMENTED)
    alice = on_every_worker(lambda: subscribe(server.stream_url("alice")), 2)
    bob = subscribe(server.stream_url("bob"))
    response = server.post("/users/alice/kick", None)
    assert response.status_code == 202
    assert response.json() == {"user_id": "alice", "kicked": True}
    for stream in alice:
        close = stream.next("close", timeout=10)
        assert json.loads(close.data) == {"reason": "kicked"}
        rest = stream.rest(timeout=5)
        assert named(rest) == []
        retry = retry_of(rest)
        assert retry is not None
        assert retry >= 30000, "a kicked client must not come straight back"
    # bob is untouched: still open, and still gets his notices.
    assert not bob.ended.is_set()
    sent = server.publish("bob", {"n": 1})
    assert bob.next("notice", timeout=10).id == str(sent["id"])
    assert [b.event for b in named(bob.seen)] == ["snapshot", "notice"]
    for stream in [*alice, bob]:
        stream.close()


# -- 8. limits ---------------------------------------------------------------


def test_per_user_stream_limit_replaces_the_oldest() -> None:
    """MAX_STREAMS_PER_USER=2: alice's third stream closes her oldest (close "replaced"); two stay live."""
    app = standalone_app(SSE_NOTIFY_MAX_STREAMS_PER_USER=2)
    client = app.test_client()
    path = f"/connection/alice?token={token_for('alice')}"
    opened = [open_stream(client, path) for _ in range(3)]
    for response, chunks in opened:
        assert response.status_code == 200
        assert next(chunks).startswith(b": connected")
    (_, oldest_chunks), *live = opened
    blocks = decode(b"".join(oldest_chunks))  # ends by itself
    assert [(b.event, json.loads(b.data)) for b in named(blocks)] == [("close", {"reason": "replaced"})]
    retry = retry_of(blocks)
    assert retry is not None
    assert retry >= 30000
    assert get_state(app).hub.stats()["streams"] == 2
    with app.app_context():
        sent = notify("alice", {"n": 1})
    for _, chunks in live:
        [notice] = named(decode(next(chunks)))
        assert (notice.event, notice.id, json.loads(notice.data)) == ("notice", str(sent.id), sent.to_dict())
    for response, _ in opened:
        response.close()


@pytest.mark.server
@pytest.mark.timeout(60)
def test_server_stream_limit_sends_clients_away_for_later(make_server: t.Callable[..., Server]) -> None:
    """With MAX_STREAMS=2, a third stream is 200 but closed at once with retry >= 2500 ms and no preamble."""
    server = make_server(SSE_NOTIFY_MAX_STREAMS="2")
    first, second = subscribe(server.stream_url("alice")), subscribe(server.stream_url("bob"))
    started = time.monotonic()
    with httpx.Client(timeout=10) as client, client.stream("GET", server.stream_url("carol")) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        raw = response.read()
    assert time.monotonic() - started < 5, "the refused stream was not closed at once"
    assert b"connected" not in raw, raw
    blocks = decode(raw)
    assert named(blocks) == [], raw
    retry = retry_of(blocks)
    assert retry is not None, raw
    assert retry >= 2500, raw
    health = server.health()
    assert health["refused"] >= 1
    assert health["streams"] == 2
    # The two that were in are still served.
    sent = server.publish("alice", {"n": 1})
    assert first.next("notice").id == str(sent["id"])
    assert not second.ended.is_set()
    first.close()
    second.close()


def test_publish_rate_limit_per_key() -> None:
    """RATE_LIMIT=5/minute: a key's 6th publish is 429 rate_limited with Retry-After; another key is not."""
    app = standalone_app(SSE_NOTIFY_PUBLISH_KEYS=list(KEYS), SSE_NOTIFY_RATE_LIMIT="5/minute")
    client = app.test_client()
    k1, k2 = ({"Authorization": f"Bearer {key}"} for key in KEYS)
    for n in range(5):
        assert client.post("/users/alice/notices", json={"n": n}, headers=k1).status_code == 201
    for _ in range(2):
        refused = client.post("/users/alice/notices", json={"n": 5}, headers=k1)
        assert_json_error(refused, 429, "rate_limited")
        retry_after = refused.headers["Retry-After"]
        assert retry_after.isdigit(), retry_after
        assert 1 <= int(retry_after) <= 60
    assert head(app) == 5, "a rate-limited publish was stored"
    assert client.post("/users/alice/notices", json={"n": 6}, headers=k2).status_code == 201
    assert head(app) == 6


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
    batch = server.post("/notices", [{"user_id": user, "data": {"all": NASTY}} for user in users])
    assert batch.status_code == 201
    for user, notice in zip(users, batch.json(), strict=True):
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


# -- 11. the access log (real gunicorn) --------------------------------------


@pytest.mark.server
@pytest.mark.timeout(60)
def test_access_log_never_shows_a_token(make_server: t.Callable[..., Server], tmp_path: Path) -> None:
    """gunicorn's access log shows stream URLs with token=[redacted], never the token or a key."""
    access_log = tmp_path / "access.log"
    server = make_server(GUNICORN_CMD_ARGS=f"--access-logfile {access_log}")
    token = token_for("alice")
    bogus = "SECRETVALUE-" + "q" * 40
    streams = [
        subscribe(f"{server.url}/connection/alice?token={token}"),
        subscribe(f"{server.url}/connection/alice?last_event_id=0&token={token}"),
    ]
    refused = httpx.get(f"{server.url}/connection/alice?token={bogus}", timeout=5)
    assert refused.status_code == 401
    publish = httpx.post(
        f"{server.url}/users/alice/notices?key={PUBLISH_KEY}", json={"n": 1}, headers=AUTH, timeout=5
    )
    assert publish.status_code == 201
    for stream in streams:
        stream.close()

    def logged() -> str | None:
        # A stream's line is written when it ends: at the next heartbeat (1 s) after the client left.
        text = access_log.read_text() if access_log.exists() else ""
        return text if text.count("/connection/alice") == 3 and "/users/alice/notices" in text else None

    text = wait_for(logged, 10, "the access log lines", interval=0.2)
    assert "GET /connection/alice?token=[redacted] HTTP/1.1" in text
    assert "GET /connection/alice?last_event_id=0&token=[redacted] HTTP/1.1" in text
    assert "POST /users/alice/notices?key=[redacted] HTTP/1.1" in text
    for secret in (token, token.split(".")[-1], "SECRETVALUE", PUBLISH_KEY):
        assert secret not in text, f"{secret!r} in the access log"
        assert secret not in server.log(), f"{secret!r} in gunicorn's log"


# -- 12. CORS ----------------------------------------------------------------

ALLOWED = "https://app.example.com"
OTHERS = ["https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.io", "null"]


def cors_requests(client: FlaskClient, origin: str) -> dict[str, TestResponse]:
    """A preflight for a publish and for a stream, a publish and a stream GET, all from ``origin``."""
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    out = {
        "preflight-publish": client.options(
            "/users/alice/notices",
            headers={**preflight, "Access-Control-Request-Headers": "authorization, content-type"},
        ),
        "preflight-stream": client.options(
            "/connection/alice",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        ),
        "publish": client.post("/users/alice/notices", json={"n": 1}, headers={**AUTH, "Origin": origin}),
    }
    stream = client.get(
        f"/connection/alice?token={token_for('alice')}", headers={"Origin": origin}, buffered=False
    )
    stream.close()
    out["stream"] = stream
    return out


@pytest.fixture(name="cors_client")
def _cors_client() -> FlaskClient:
    return standalone_app(SSE_NOTIFY_CORS_ORIGINS=[ALLOWED]).test_client()


def test_cors_allowed_origin(cors_client: FlaskClient) -> None:
    """A configured origin gets Access-Control-Allow-Origin (itself) and Allow-Credentials on each request."""
    for name, response in cors_requests(cors_client, ALLOWED).items():
        assert response.status_code < 300, (name, response.status_code)
        assert response.headers.get("Access-Control-Allow-Origin") == ALLOWED, name
        assert response.headers.get("Access-Control-Allow-Credentials") == "true", name


@pytest.mark.parametrize("origin", OTHERS)
def test_cors_other_origin(cors_client: FlaskClient, origin: str) -> None:
    """Any other origin gets no Access-Control-Allow-Origin."""
    for name, response in cors_requests(cors_client, origin).items():
        assert "Access-Control-Allow-Origin" not in response.headers, name
        assert "Access-Control-Allow-Credentials" not in response.headers, name


def test_cors_off_by_default(client: FlaskClient) -> None:
    """With no origins configured, no response carries any CORS header."""
    for origin in (ALLOWED, *OTHERS):
        for name, response in cors_requests(client, origin).items():
            found = [h for h, _ in response.headers if h.lower().startswith("access-control-")]
            assert found == [], (origin, name, found)


@pytest.mark.parametrize(
    "origins",
    [
        pytest.param(["*"], id="star"),
        pytest.param([ALLOWED, "*"], id="star-among-others"),
        pytest.param("*", id="star-as-env-text"),
        pytest.param(
            ["https://*.example.com"],
            id="wildcard-subdomain",
        ),
    ],
)
def test_cors_wildcard_refused_at_start(origins: t.Any) -> None:
    """A '*' in SSE_NOTIFY_CORS_ORIGINS is a ConfigError at start (requests carry credentials)."""
    with pytest.raises(ConfigError, match="SSE_NOTIFY_CORS_ORIGINS"):
        standalone_app(SSE_NOTIFY_CORS_ORIGINS=origins)


@pytest.fixture(name="session_app")
def _session_app(tmp_path: Path) -> Flask:
    """A host app whose authorize hook reads its own session cookie (as examples/notify_app does)."""
    app = host_app(tmp_path / "instance", SSE_NOTIFY_CORS_ORIGINS=["https://app.example.com"])
    SSENotify(app, url_prefix="/notify", authorize=lambda user_id: session.get("user") == user_id)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        session["user"] = user_id
        return "ok"

    return app


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://localhost"}, 200),
        ({"Origin": "https://app.example.com"}, 200),  # a CORS origin
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({}, 200),  # no browser: nothing to forge
    ],
)
def test_hook_allowed_changes_must_come_from_this_site(
    session_app: Flask, headers: dict[str, str], status: int
) -> None:
    """A mark the authorize hook allows by session cookie is refused when sent from another site."""
    client = session_app.test_client()
    client.post("/login/alice")
    nid = notify("alice", {"n": 1}, app=session_app).id
    response = client.post(f"/notify/users/alice/notices/{nid}/read", headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 403:
        assert response.get_json()["error"] == "forbidden"
        assert "another site" in response.get_json()["detail"]
    # Reading is not a change: another site could not see the answer anyway (no CORS for it).
    assert client.get("/notify/users/alice/notices", headers=headers).status_code == 200
