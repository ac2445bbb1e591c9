"""Topics: a third audience beside one user and everyone (``?topics=``, ``POST /topics/<t>/notices``).

The API is checked through Flask's test client; delivery and resume through real
``gunicorn -k gevent`` servers, on SQLite and on Redis with targeted delivery.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from sse_notify import SSENotify, follow_topic, issue_token, notify_followers, notify_topic
from sse_notify.auth import verify_token
from sse_notify.errors import InvalidTopic
from sse_notify.service import get_state

from .sse_client import subscribe
from .support import SECRET, RedisServer, Server, delivered, host_app, on_targeted_redis, token_for, wait_for


def topic_token(user_id: str, *topics: str) -> str:
    """A connection token of ``user_id`` that grants ``topics``."""
    from sse_notify.auth import issue_token as issue

    return issue(SECRET, user_id, 3600, topics)


def ids(events: list[t.Any]) -> list[int]:
    """The notice ids of ``events``."""
    return [int(e.id) for e in events]


# -- the API ------------------------------------------------------------------


def test_a_topic_notice_answers_201_with_its_topic(client: FlaskClient) -> None:
    """POST /topics/<t>/notices stores a notice with ``topic`` set and ``user_id`` null."""
    body = delivered(client.post("/topics/match-42/notices?category=score", json={"home": 1}))
    assert (body["topic"], body["user_id"], body["data"], body["category"]) == (
        "match-42",
        None,
        {"home": 1},
        "score",
    )


@pytest.mark.parametrize(
    ("path", "query", "status", "error"),
    [
        ("/topics/match%2042/notices", "", 400, "invalid_topic"),
        ("/topics/" + "m" * 129 + "/notices", "", 400, "invalid_topic"),
        ("/topics/match-42/notices", "?group=goals", 400, "invalid_option"),
        ("/topics/match-42/notices", "?sort=asc", 400, "invalid_option"),
    ],
)
def test_a_bad_topic_publish_is_refused(
    client: FlaskClient, path: str, query: str, status: int, error: str
) -> None:
    """A topic outside the rule, grouping (topics are not grouped) or an unknown option: 400, saying what."""
    response = client.post(path + query, json={"n": 1})
    assert response.status_code == status, response.text
    assert response.get_json()["error"] == error


def test_publishing_to_a_topic_needs_the_publish_key(app: Flask) -> None:
    """Without the publish key a topic publish is 401, as every publish is."""
    response = app.test_client().post("/topics/match-42/notices", json={"n": 1})
    assert response.status_code == 401


def test_a_topic_notice_is_in_no_inbox(client: FlaskClient) -> None:
    """A topic's notice is not an inbox item of anyone's."""
    delivered(client.post("/topics/match-42/notices", json={"n": 1}))
    mine = delivered(client.post("/users/alice/notices", json={"n": 2}))
    listed = client.get("/users/alice/notices").get_json()
    assert [n["id"] for n in listed["notices"]] == [mine["id"]]


def test_tokens_grant_topics(client: FlaskClient, app: Flask, runner: FlaskCliRunner) -> None:
    """POST /users/<id>/tokens?topics=, issue_token(topics=) and the CLI's --topic put grants in the token."""
    answer = client.post("/users/alice/tokens?topics=match-42,team-*").get_json()
    assert answer["topics"] == ["match-42", "team-*"]
    with app.app_context():
        secret = get_state(app).security.secret
        from_python = issue_token("alice", 60, topics=["match-42"])
    from_cli = runner.invoke(args=["token", "alice", "--topic", "league-*"]).output.strip()
    assert verify_token(secret, answer["token"], "alice").topics == ("match-42", "team-*")
    assert verify_token(secret, from_python, "alice").topics == ("match-42",)
    assert verify_token(secret, from_cli, "alice").topics == ("league-*",)
    refused = client.post("/users/alice/tokens?topics=bad%20name")
    assert (refused.status_code, refused.get_json()["error"]) == (400, "invalid_topic")


@pytest.mark.parametrize(
    ("grants", "topics", "status"),
    [
        (("match-42",), "match-42", 200),
        (("match-*",), "match-42,match-7", 200),
        (("*",), "anything", 200),
        ((), "match-42", 403),
        (("match-4",), "match-42", 403),
        (("match-42",), "match-42,team-7", 403),
        (("match-42",), "bad%20name", 400),
        (("match-*",), ",".join(f"match-{i}" for i in range(33)), 400),
    ],
)
def test_a_stream_follows_only_the_topics_its_token_grants(
    app: Flask, grants: tuple[str, ...], topics: str, status: int
) -> None:
    """?topics= needs each topic granted by the token (a name, or a prefix with *): else 403; bad: 400."""
    token = topic_token("alice", *grants)
    response = app.test_client().get(f"/connection/alice?token={token}&topics={topics}", buffered=False)
    try:
        assert response.status_code == status
        if status != 200:
            assert response.get_json()["error"] == {400: "invalid_topic", 403: "forbidden"}[status]
    finally:
        response.close()


def test_the_authorize_topic_hook_decides_before_the_token(tmp_path: Path) -> None:
    """authorize_topic: True allows a topic the token lacks, False refuses one it grants, None leaves it."""
    decisions = {"open": True, "closed": False}
    app = host_app(tmp_path)
    SSENotify(app, authorize_topic=lambda user_id, topic: decisions.get(topic))
    client = app.test_client()
    token = topic_token("alice", "closed", "granted")

    def status(topics: str) -> int:
        response = client.get(f"/connection/alice?token={token}&topics={topics}", buffered=False)
        response.close()
        return response.status_code

    assert [status(t) for t in ("open", "closed", "granted", "other")] == [200, 403, 200, 403]


# -- delivery and resume, on real servers ---------------------------------------


def test_topic_notices_reach_the_followers_only_and_resume_in_order(live_server: Server) -> None:
    """A topic notice reaches each stream following the topic, in order with the user's and broadcasts."""
    server = live_server
    token = topic_token("alice", "match-*")
    fan = subscribe(f"{server.url}/connection/alice?token={token}&topics=match-42")
    other = subscribe(f"{server.url}/connection/bob?token={topic_token('bob', 'match-7')}&topics=match-7")
    plain = subscribe(server.stream_url("carol"))
    try:
        sent = [
            delivered(server.post("/topics/match-42/notices", {"goal": 1})),
            server.publish("alice", {"own": 1}),
            server.broadcast({"all": 1}),
            delivered(server.post("/topics/match-7/notices", {"goal": 2})),
            delivered(server.post("/topics/match-42/notices", {"goal": 3})),
        ]
        got = fan.notices(4)
        assert ids(got) == [sent[i]["id"] for i in (0, 1, 2, 4)]
        assert json.loads(got[0].data)["topic"] == "match-42"
        assert ids(other.notices(2)) == [sent[2]["id"], sent[3]["id"]]
        assert ids(plain.notices(1)) == [sent[2]["id"]]
        plain.nothing(0.3)

        # A resume replays the user's notices, the broadcasts and the stream's topics, once, in order.
        back = subscribe(
            f"{server.url}/connection/alice?token={token}&topics=match-42", last_event_id=str(sent[0]["id"])
        )
        assert ids(back.notices(3)) == [sent[i]["id"] for i in (1, 2, 4)]
        back.nothing(0.3)
        back.close()
    finally:
        for sub in (fan, other, plain):
            sub.close()


def test_notify_topic_from_python(app: Flask) -> None:
    """notify_topic() stores a topic notice, returned as a receipt with the topic."""
    with app.app_context():
        receipt = notify_topic("match-42", {"home": 2}, category="score")
    assert receipt.status == "delivered"
    assert receipt.notice is not None
    assert (receipt.notice.topic, receipt.notice.user_id, receipt.notice.data) == (
        "match-42",
        None,
        {"home": 2},
    )
    with pytest.raises(InvalidTopic, match="topic must be"), app.app_context():
        notify_topic("no spaces", {})


def test_topics_on_redis_reach_both_workers_and_only_followers_subscribe(
    make_server: t.Callable[..., Server], redis_server: RedisServer
) -> None:
    """On Redis, a worker subscribes to a topic while one of its streams follows it; both workers deliver."""
    server, listeners = on_targeted_redis(make_server, redis_server)
    token = topic_token("fan", "match-42")
    fans = [subscribe(f"{server.url}/connection/fan?token={token}&topics=match-42") for _ in range(6)]
    try:
        assert listeners("#match-42")[0] >= 1
        sent = delivered(server.post("/topics/match-42/notices", {"goal": 1}))
        for fan in fans:
            assert ids(fan.notices(1)) == [sent["id"]]
        for fan in fans:
            fan.close()
        wait_for(lambda: listeners("#match-42") == [0], 10, "the workers to leave the topic after the linger")
    finally:
        for fan in fans:
            fan.close()


def test_a_stream_without_a_grant_gets_403_from_a_real_server(live_server: Server) -> None:
    """From outside: a topic the token does not grant is a 403 with a JSON error, before any stream byte."""
    response = httpx.get(
        f"{live_server.url}/connection/alice?token={token_for('alice')}&topics=match-42", timeout=10
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "match-42" in response.json()["detail"]


# -- followers: inbox=true ------------------------------------------------------


def test_followers_are_set_listed_and_removed(client: FlaskClient) -> None:
    """PUT makes a follower (201, then 200), GET lists them, DELETE removes one (204, then 404)."""
    assert client.put("/topics/match-42/followers/alice").status_code == 201
    again = client.put("/topics/match-42/followers/alice")
    assert (again.status_code, again.get_json()) == (
        200,
        {"topic": "match-42", "user_id": "alice", "following": True},
    )
    assert client.put("/topics/match-42/followers/bob").status_code == 201
    assert client.get("/topics/match-42/followers").get_json() == {
        "topic": "match-42",
        "followers": ["alice", "bob"],
    }
    assert client.delete("/topics/match-42/followers/alice").status_code == 204
    gone = client.delete("/topics/match-42/followers/alice")
    assert (gone.status_code, gone.get_json()["error"]) == (404, "not_found")
    assert client.get("/topics/match-42/followers").get_json()["followers"] == ["bob"]
    bad = client.put("/topics/match%2042/followers/alice")
    assert (bad.status_code, bad.get_json()["error"]) == (400, "invalid_topic")
    assert client.put("/topics/match-42/followers/al%20ice").get_json()["error"] == "invalid_user_id"


def test_inbox_true_delivers_to_each_follower_as_their_own(client: FlaskClient) -> None:
    """inbox=true: each follower gets the notice in their inbox (their own id); no one else does."""
    for user in ("alice", "bob"):
        client.put(f"/topics/match-42/followers/{user}")
    receipts = delivered(
        client.post("/topics/match-42/notices?inbox=true&category=score", json={"final": "2-1"})
    )
    assert [(r["user_id"], r.get("topic"), r["category"]) for r in receipts] == [
        ("alice", None, "score"),
        ("bob", None, "score"),
    ]
    for user, receipt in zip(("alice", "bob"), receipts, strict=True):
        listed = client.get(f"/users/{user}/notices").get_json()
        assert [n["id"] for n in listed["notices"]] == [receipt["id"]]
        assert listed["unread"] == 1
    assert client.get("/users/carol/notices").get_json()["notices"] == []
    nobody = client.post("/topics/match-7/notices?inbox=true", json={"n": 1})
    assert (nobody.status_code, nobody.get_json()) == (200, [])
    plain = delivered(client.post("/topics/match-42/notices?inbox=false", json={"n": 2}))
    assert plain["topic"] == "match-42"
    bad = client.post("/topics/match-42/notices?inbox=maybe", json={"n": 3})
    assert (bad.status_code, bad.get_json()["error"]) == (400, "invalid_option")


def test_inbox_true_goes_out_in_batches_and_once_per_key(tmp_path: Path) -> None:
    """More followers than a batch holds: every one gets it; the same Idempotency-Key stores nothing more."""
    from .support import PUBLISH_KEY, standalone_app

    app = standalone_app(f"sqlite:///{tmp_path}/notices.sqlite3", SSE_NOTIFY_MAX_BATCH=2)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {PUBLISH_KEY}"
    users = [f"u{i}" for i in range(5)]
    for user in users:
        client.put(f"/topics/match-42/followers/{user}")
    headers = {"Idempotency-Key": "final-whistle"}
    first = client.post("/topics/match-42/notices?inbox=true", json={"final": True}, headers=headers)
    again = client.post("/topics/match-42/notices?inbox=true", json={"final": True}, headers=headers)
    assert [r["user_id"] for r in delivered(first)] == users
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [r["id"] for r in again.get_json()] == [r["id"] for r in first.get_json()]
    for user in users:
        assert len(client.get(f"/users/{user}/notices").get_json()["notices"]) == 1


def test_follow_topic_and_notify_followers_from_python(app: Flask) -> None:
    """follow_topic() and notify_followers(): the Python forms of the followers' API."""
    with app.app_context():
        assert follow_topic("match-42", "alice") is False
        assert follow_topic("match-42", "alice") is True
        receipts = notify_followers("match-42", {"final": True}, category="score")
        assert [(r.user_id, r.status) for r in receipts] == [("alice", "delivered")]
        assert follow_topic("match-42", "alice", follows=False) is True
        assert notify_followers("match-42", {"n": 2}) == []
