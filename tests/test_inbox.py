"""The inbox over HTTP and on the stream: listing, marks, their events, and the snapshot."""

from __future__ import annotations

import json
import typing as t

import httpx
import pytest
from flask.testing import FlaskClient

from .sse_client import Subscriber, named
from .support import PUBLISH_KEY, RedisServer, Server, token_for

JSONBody = dict[str, t.Any]


def publish(client: FlaskClient, user: str, n: int) -> int:
    """Publish ``{"n": n}`` to ``user`` with the test client; the new id."""
    response = client.post(f"/users/{user}/notices", json={"n": n})
    assert response.status_code == 201, response.data
    return int(response.get_json()["id"])


def as_user(user: str) -> dict[str, str]:
    """Headers that carry ``user``'s connection token."""
    return {"Authorization": f"Bearer {token_for(user)}"}


# -- HTTP, with the test client -------------------------------------------------------


def test_listing_newest_first_with_state_and_unread_count(client: FlaskClient) -> None:
    """GET /users/<id>/notices lists the user's notices and broadcasts, newest first, with flags and count."""
    first = publish(client, "alice", 1)
    publish(client, "bob", 2)
    shout = client.post("/broadcast", json={"all": True}).get_json()["id"]
    body = client.get("/users/alice/notices", headers=as_user("alice")).get_json()
    assert [(n["id"], n["read"], n["archived"]) for n in body["notices"]] == [
        (shout, False, False),
        (first, False, False),
    ]
    assert body["notices"][1]["data"] == {"n": 1}
    assert (body["unread"], body["next"]) == (2, None)


def test_marks_and_read_all_over_http(client: FlaskClient) -> None:
    """read, unread, archive, unarchive and read-all answer 200 with the new unread count."""
    ids = [publish(client, "alice", i) for i in range(3)]
    user = as_user("alice")
    assert client.post(f"/users/alice/notices/{ids[0]}/read", headers=user).get_json() == {
        "id": ids[0],
        "read": True,
        "unread": 2,
    }
    assert client.post(f"/users/alice/notices/{ids[1]}/archive", headers=user).get_json()["unread"] == 1
    archived = client.get("/users/alice/notices?archived=true", headers=user).get_json()
    assert [n["id"] for n in archived["notices"]] == [ids[1]]
    assert client.post(f"/users/alice/notices/{ids[1]}/unarchive", headers=user).get_json()["unread"] == 2
    assert client.post(f"/users/alice/notices/{ids[0]}/unread", headers=user).get_json()["unread"] == 3
    unread_only = client.get("/users/alice/notices?unread=1&limit=2", headers=user).get_json()
    assert ([n["id"] for n in unread_only["notices"]], unread_only["next"]) == ([ids[2], ids[1]], ids[1])
    assert client.post("/users/alice/notices/read-all", headers=user).get_json() == {
        "read": True,
        "through": ids[2],
        "unread": 0,
    }


def test_pages_follow_next(client: FlaskClient) -> None:
    """Following ``next`` as ``before`` walks the whole inbox once, newest first."""
    ids = [publish(client, "alice", i) for i in range(5)]
    seen: list[int] = []
    query = "limit=2"
    while True:
        body = client.get(f"/users/alice/notices?{query}").get_json()
        seen += [n["id"] for n in body["notices"]]
        if body["next"] is None:
            break
        query = f"limit=2&before={body['next']}"
    assert seen == ids[::-1]


@pytest.mark.parametrize(
    ("path", "status", "error", "detail"),
    [
        ("/users/alice/notices/999999/read", 404, "not_found", "not in alice's inbox"),
        ("/users/alice/notices/{bob}/read", 404, "not_found", "not in alice's inbox"),
        ("/users/alice/notices/{mine}/delete", 404, "not_found", "not found"),
    ],
)
def test_marking_what_is_not_in_the_inbox_is_404(
    client: FlaskClient, path: str, status: int, error: str, detail: str
) -> None:
    """A notice of another user, an unknown id, or an unknown action is a JSON 404."""
    ids = {"bob": publish(client, "bob", 1), "mine": publish(client, "alice", 2)}
    response = client.post(path.format(**ids))
    assert response.status_code == status
    assert response.get_json()["error"] == error
    assert detail in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("limit=0", "limit must be a whole number from 1 to 100"),
        ("limit=101", "limit must be a whole number from 1 to 100"),
        ("limit=x", "limit must be"),
        ("before=-3", "before must be"),
        ("before=99999999999999999999", "before must be"),
        ("unread=maybe", "unread must be true or false"),
        ("archived=2", "archived must be true or false"),
    ],
)
def test_bad_listing_arguments_are_400(client: FlaskClient, query: str, detail: str) -> None:
    """A listing argument out of range is a 400 that names it."""
    response = client.get(f"/users/alice/notices?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"
    assert detail in response.get_json()["detail"]


def test_inbox_needs_the_users_token_or_a_publish_key(client: FlaskClient) -> None:
    """The user's own token or a publish key may read and mark; nothing, or another user's token, may not."""
    mine = publish(client, "alice", 1)
    anonymous = {"Authorization": ""}
    for method, path in (("get", "/users/alice/notices"), ("post", f"/users/alice/notices/{mine}/read")):
        call = getattr(client, method)
        assert call(path, headers=anonymous).status_code == 401
        assert call(path, headers=as_user("bob")).status_code == 403
        assert call(path, headers={"Authorization": "Bearer not-a-key-or-token"}).status_code == 401
        assert call(path, headers=as_user("alice")).status_code == 200
        assert call(f"{path}?token={token_for('alice')}", headers=anonymous).status_code == 200
        assert call(path, headers={"Authorization": f"Bearer {PUBLISH_KEY}"}).status_code == 200


def test_inbox_does_not_take_the_token_cookie(client: FlaskClient) -> None:
    """The token cookie (meant for streams) does not open the inbox: another site's form could use it."""
    mine = publish(client, "alice", 1)
    client.set_cookie("sse_notify_token", token_for("alice"))
    anonymous = {"Authorization": ""}
    response = client.post(f"/users/alice/notices/{mine}/read", headers=anonymous)
    assert response.status_code == 401
    assert "?token= or Authorization: Bearer" in response.get_json()["detail"]
    assert client.get("/users/alice/notices", headers=anonymous).status_code == 401


# -- on the stream, with real servers ----------------------------------------------------


def snapshot_of(sub: Subscriber) -> JSONBody:
    """The first event of the stream, which must be its snapshot."""
    first = sub.next("snapshot")
    assert named(sub.seen) == [first], sub.seen
    return t.cast(JSONBody, first.json())


def mark(server: Server, user: str, notice_id: int | str, action: str) -> JSONBody:
    """POST a mark with the user's token; the answer (asserting 200)."""
    path = f"/users/{user}/notices/" + ("read-all" if action == "read-all" else f"{notice_id}/{action}")
    response = httpx.post(server.url + path, headers=as_user(user), timeout=10)
    assert response.status_code == 200, response.text
    return t.cast(JSONBody, response.json())


@pytest.fixture(name="store", params=["sqlite", "redis"])
def _store(request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "notices.sqlite3")
    redis: RedisServer = request.getfixturevalue("own_redis")
    return redis.url


@pytest.mark.server
def test_every_stream_of_the_user_sees_marks_on_every_worker(
    make_server: t.Callable[..., Server], store: str
) -> None:
    """Marks made over HTTP reach each of the user's streams, on whichever worker, as read/archive events."""
    server = make_server(workers=2, store=store)
    ids = [server.publish("alice", {"n": i})["id"] for i in range(3)]
    subs = [Subscriber(server.stream_url("alice")) for _ in range(4)]
    bob = Subscriber(server.stream_url("bob"))
    try:
        for sub in subs:
            snap = snapshot_of(sub)
            assert snap["unread"] == 3
            assert [n["id"] for n in snap["notices"]] == ids[::-1]
        snapshot_of(bob)
        assert mark(server, "alice", ids[0], "read")["unread"] == 2
        mark(server, "alice", ids[1], "archive")
        mark(server, "alice", "", "read-all")
        for sub in subs:
            first = json.loads(sub.next("read").data)
            assert first == {"ids": [ids[0]], "read": True, "unread": 2}
            assert json.loads(sub.next("archive").data) == {"ids": [ids[1]], "archived": True, "unread": 1}
            assert json.loads(sub.next("read").data) == {
                "ids": [],
                "read": True,
                "all": True,
                "through": ids[2],
                "unread": 0,
            }
        bob.nothing(0.3, event="read")
    finally:
        for sub in (*subs, bob):
            sub.close()


@pytest.mark.server
def test_snapshot_on_reconnect_shows_the_state(live_server: Server) -> None:
    """A stream that comes back (with Last-Event-ID) starts with a snapshot of the state as it is now."""
    ids = [live_server.publish("carol", {"n": i})["id"] for i in range(3)]
    mark(live_server, "carol", ids[2], "read")
    resumed = Subscriber(live_server.stream_url("carol"), last_event_id=str(ids[0]))
    try:
        snap = snapshot_of(resumed)
        assert snap["unread"] == 2
        assert [(n["id"], n["read"]) for n in snap["notices"]] == [
            (ids[2], True),
            (ids[1], False),
            (ids[0], False),
        ]
        assert [int(e.id) for e in resumed.notices(2)] == ids[1:]  # the replay follows the snapshot
    finally:
        resumed.close()


@pytest.mark.server
def test_snapshot_can_be_turned_off(make_server: t.Callable[..., Server]) -> None:
    """With SSE_NOTIFY_SNAPSHOT=false the stream sends no snapshot: the first event is a notice."""
    server = make_server(SSE_NOTIFY_SNAPSHOT="false")
    sub = Subscriber(server.stream_url("dave"))
    try:
        assert sub.opened.wait(10)
        sent = server.publish("dave", {"n": 1})
        first = sub.next("notice")
        assert named(sub.seen) == [first]
        assert first.id == str(sent["id"])
    finally:
        sub.close()
