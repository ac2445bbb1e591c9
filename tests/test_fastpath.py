"""The stream route's fast path (sse_notify/fastpath.py): Flask's answers, taken only when nothing differs."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask, g, request_started

from sse_notify import create_app

from .support import PUBLISH_KEY, SECRET, token_for


def make_app(tmp_path: Path) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "SSE_NOTIFY_BROKER_URL": f"sqlite:///{tmp_path}/notices.sqlite3",
            "SECRET_KEY": SECRET,
            "SSE_NOTIFY_PUBLISH_KEYS": [PUBLISH_KEY],
        }
    )


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


def first_bytes(app: Flask, url: str, **kw: t.Any) -> tuple[int, list[tuple[str, str]], bytes]:
    response = app.test_client().get(url, buffered=False, **kw)
    try:
        first = next(iter(response.response)) if response.status_code == 200 else response.data
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
