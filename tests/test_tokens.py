"""Who may read a stream: connection tokens, their expiry while a stream is open, tokens in logs.

Each test's docstring says what must hold. The test client covers request-level rules; real
gunicorn covers what only a running server shows (expiry while open, the access log).
"""

from __future__ import annotations

import base64
import json
import time
import typing as t
from pathlib import Path

import httpx
import pytest
from flask.testing import FlaskClient

from sse_notify.auth import issue_token, verify_token
from sse_notify.config import DEFAULTS
from sse_notify.errors import TokenExpired

from .sse_client import named, retry_of, subscribe
from .support import AUTH, PUBLISH_KEY, SECRET, Server, assert_json_error, open_stream, token_for, wait_for

COOKIE = DEFAULTS["SSE_NOTIFY_TOKEN_COOKIE"]
USERS = ("alice", "bob", "carol")


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
    assert publish.status_code == 400  # `key` is no delivery option; the log must hide it all the same
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


def _altered_tokens() -> list[str]:
    """Tokens as issued, each part altered, other secrets, compressed and odd ones."""
    from itsdangerous import URLSafeTimedSerializer

    from sse_notify.auth import SALT

    good = issue_token(SECRET, "alice", 60)
    payload, stamp, signature = good.split(".")
    foreign = URLSafeTimedSerializer("another secret", salt=SALT).dumps({"u": "alice", "t": 60})
    plain = URLSafeTimedSerializer(SECRET, salt=SALT)
    compressed = plain.dumps({"u": "a" * 100, "t": 60})  # itsdangerous compresses it ("." first)
    tokens = [good, foreign, compressed, plain.dumps({"u": "alice", "t": 60}), plain.dumps(["alice"])]
    tokens += [plain.dumps("not json?"), issue_token(SECRET, "ünïcode", 60)]
    flip = {"A": "B", "-": "_", "_": "-"}
    for part in range(3):
        parts = [payload, stamp, signature]
        parts[part] = flip.get(parts[part][0], "A") + parts[part][1:]
        tokens.append(".".join(parts))
        parts = [payload, stamp, signature]
        parts[part] = parts[part] + "="
        tokens.append(".".join(parts))
        parts = [payload, stamp, signature]
        parts[part] = parts[part][:-1] + "é"
        tokens.append(".".join(parts))
        parts = [payload, stamp, signature]
        parts[part] = ""
        tokens.append(".".join(parts))
    tokens += [
        good + ".",
        "." + good,
        good.replace(".", ".."),
        f"{payload}.{signature}",
        "",
        ".",
        "..",
        "a.b.c",
    ]
    return tokens


@pytest.mark.parametrize("token", _altered_tokens())
def test_tokens_are_checked_as_itsdangerous_checks_them(token: str) -> None:
    """Every token gets itsdangerous's own answer: the same payload and time, or the same error."""
    from itsdangerous import BadData

    from sse_notify.auth import _loads, _serializer

    try:
        payload, signed_at = _serializer(SECRET).loads(token, return_timestamp=True)
        expected: t.Any = (payload, signed_at.timestamp())
    except BadData as exc:
        expected = type(exc)
    try:
        got: t.Any = _loads(SECRET, token)
    except BadData as exc:
        got = type(exc)
    assert got == expected
