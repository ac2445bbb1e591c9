"""sse_notify in a host app: its own login (the authorize hook, a token cookie), same-site changes, CORS."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask, Response, make_response, request, session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from sse_notify import ConfigError, notify
from sse_notify.auth import verify_token
from sse_notify.config import DEFAULTS
from sse_notify.extension import SSENotify, set_token_cookie

from .support import AUTH, SECRET, assert_json_error, host_app, open_stream, standalone_app, token_for

COOKIE = DEFAULTS["SSE_NOTIFY_TOKEN_COOKIE"]


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
