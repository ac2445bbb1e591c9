"""When the server closes or refuses: kick across workers, limits per user, per worker, per publish key."""

from __future__ import annotations

import json
import time
import typing as t

import httpx
import pytest

from sse_notify import notify
from sse_notify.service import get_state

from .sse_client import decode, named, on_every_worker, retry_of, subscribe
from .support import Server, assert_json_error, head, open_stream, standalone_app, token_for

INSTRUMENTED = "tests.instrumented:app"
KEYS = ("k1", "k2")


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
        sent = notify("alice", {"n": 1}).notice
        assert sent is not None
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
