"""The HTTP API through Flask's test client: status codes, JSON bodies and errors."""

from __future__ import annotations

import json
import re
import typing as t

import pytest
from flask import Flask, render_template
from flask.testing import FlaskClient

from sse_notify import broadcast, notify, notify_many
from sse_notify.service import get_state

from .support import PUBLISH_KEY, as_json, host_app, token_for


def test_publish_answers_201_with_the_notice(client: FlaskClient) -> None:
    """POST /users/<id>/notices stores the notice and answers 201 with its JSON."""
    response = client.post("/users/alice/notices", json={"title": "hi"})
    assert response.status_code == 201
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["user_id"] == "alice"
    assert body["data"] == {"title": "hi"}
    assert isinstance(body["id"], int)
    assert body["created_at"].endswith("Z")


def test_broadcast_and_batch(client: FlaskClient) -> None:
    """/broadcast stores user_id null; /notices stores a list in order and answers the list."""
    assert client.post("/broadcast", json={"x": 1}).get_json()["user_id"] is None
    response = client.post(
        "/notices", json=[{"user_id": "a", "data": {"n": 1}}, {"user_id": "b", "data": {}}]
    )
    assert response.status_code == 201
    assert [n["user_id"] for n in response.get_json()] == ["a", "b"]


ALICE = "/users/alice/notices"
#: A batch item whose user id has a space in it.
SPACE = {"user_id": "b c", "data": {}}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error", "detail"),
    [
        ("post", ALICE, {"data": "x"}, 415, "unsupported_media_type", "Content-Type"),
        ("post", ALICE, as_json("{x"), 400, "bad_request", "not valid JSON: unexpected character"),
        ("post", ALICE, {"json": [1, 2]}, 400, "invalid_notice", "JSON object"),
        ("post", ALICE, {"json": "text"}, 400, "invalid_notice", "JSON object"),
        ("post", ALICE, as_json('{"n": NaN}'), 400, "bad_request", "not valid JSON"),
        ("post", "/users/al%20ice/notices", {"json": {}}, 400, "invalid_user_id", "user_id must be"),
        ("post", "/users/" + "a" * 129 + "/notices", {"json": {}}, 400, "invalid_user_id", "user_id must be"),
        ("post", "/notices", {"json": {}}, 400, "invalid_notice", "non-empty JSON list"),
        ("post", "/notices", {"json": [{"user_id": "a"}]}, 400, "invalid_notice", "notice 0"),
        ("post", "/notices", {"json": [{"user_id": None, "data": {}}]}, 400, "invalid_user_id", "/broadcast"),
        (
            "post",
            "/notices",
            {"json": [{"user_id": "a", "data": {}}, SPACE]},
            400,
            "invalid_user_id",
            "notice 1",
        ),
        ("get", "/connection/bad%0Aid", {}, 400, "invalid_user_id", "user_id must be"),
        ("get", "/nowhere", {}, 404, "not_found", "not found"),
        ("put", "/users/alice/notices", {}, 405, "method_not_allowed", "not allowed"),
        ("delete", "/broadcast", {}, 405, "method_not_allowed", "not allowed"),
    ],
)
def test_errors_are_json(
    client: FlaskClient,
    method: str,
    path: str,
    kwargs: dict[str, t.Any],
    status: int,
    error: str,
    detail: str,
) -> None:
    """Every refusal has the right status and a JSON body {"error", "detail"} that says what is wrong."""
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == error
    assert detail.lower() in body["detail"].lower()


def test_a_refused_batch_stores_nothing(client: FlaskClient, app: Flask) -> None:
    """A batch with one bad notice is refused whole: none of it is stored."""
    bad = [{"user_id": "a", "data": {"n": 1}}, {"user_id": "a", "data": "not an object"}]
    assert client.post("/notices", json=bad).status_code == 400
    assert get_state(app).broker.head() == 0


def test_batch_size_limit(app: Flask) -> None:
    """More than SSE_NOTIFY_MAX_BATCH notices in one request is a 400 that names the limit."""
    app.config["SSE_NOTIFY_MAX_BATCH"] = 2  # read at init: rebuild the app
    from sse_notify import create_app

    small = create_app({**app.config, "SSE_NOTIFY_MAX_BATCH": 2})
    items = [{"user_id": "a", "data": {}}] * 3
    response = small.test_client().post(
        "/notices", json=items, headers={"Authorization": f"Bearer {PUBLISH_KEY}"}
    )
    assert response.status_code == 400
    assert "at most 2" in response.get_json()["detail"]


def test_store_down_is_503(client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the store cannot be reached, publish answers 503 JSON and /healthz says down."""
    broker = get_state(app).broker
    broker.ping()
    # Make the file unreachable: point the broker at a directory that cannot exist.
    monkeypatch.setattr(broker, "path", "/proc/no-such-dir/notices.sqlite3")
    monkeypatch.setattr(broker, "_conn", None)
    response = client.post("/users/alice/notices", json={"n": 1})
    assert response.status_code == 503
    assert response.get_json()["error"] == "store_unavailable"
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["store"] == "down"


def test_healthz_ok(client: FlaskClient) -> None:
    """/healthz answers 200 with the store up and stream counts."""
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok"
    assert body["store"] == "up"
    assert body["streams"] == 0


def test_python_api(app: Flask) -> None:
    """notify, broadcast and notify_many store notices from Python inside the app."""
    with app.app_context():
        one = notify("alice", {"n": 1})
        everyone = broadcast({"n": 2})
        many = notify_many([("bob", {"n": 3}), ("carol", {"n": 4})])
    assert one.user_id == "alice"
    assert everyone.user_id is None
    assert [n.id for n in many] == [everyone.id + 1, everyone.id + 2]
    replay = get_state(app).broker.replay("alice", "0")
    assert [n.id for n in replay.notices] == [one.id, everyone.id]


def test_stream_replays_then_ends_on_shutdown(client: FlaskClient, app: Flask) -> None:
    """The test client reads a stream: first comment and retry, replayed notices, then the shutdown close."""
    with app.app_context():
        sent = notify("alice", {"n": 1}).notice
        assert sent is not None
    response = client.get(
        f"/connection/alice?token={token_for('alice')}", headers={"Last-Event-ID": "0"}, buffered=False
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in response.headers
    chunks = iter(response.response)
    head = next(chunks)
    first = re.match(rb": connected\n\nretry: (\d+)\n\nevent: snapshot\ndata: ", head)
    assert first is not None, head
    assert 1000 <= int(first[1]) <= 3000, "the first retry is not 0.5-1.5x SSE_NOTIFY_RETRY"
    assert json.loads(head.split(b"data: ", 1)[1])["unread"] == 1
    frame = next(chunks)
    assert frame.startswith(f"id: {sent.id}\nevent: notice\ndata: ".encode())
    assert json.loads(frame.split(b"data: ", 1)[1]) == sent.to_dict()
    get_state(app).node.shutdown()
    rest = b"".join(chunks)
    assert b": shutdown\n" in rest
    assert b"retry: " in rest
    response.close()
    assert get_state(app).hub.stats()["streams"] == 0


def test_index_page(client: FlaskClient) -> None:
    """The demo page is served at / as HTML that loads the browser client, which the app serves too."""
    response = client.get("/")
    assert response.status_code == 200
    assert b"sse-notify.js" in response.data
    script = client.get("/sse-notify.js")
    assert script.status_code == 200
    assert script.mimetype == "text/javascript"
    assert b"SSENotify" in script.data


def test_the_client_is_served_as_a_script_an_es_module_and_its_types(client: FlaskClient) -> None:
    """/sse-notify.mjs is the same code as /sse-notify.js with exports; /sse-notify.d.ts its declarations."""
    script = client.get("/sse-notify.js").data
    module = client.get("/sse-notify.mjs")
    assert module.mimetype == "text/javascript"
    assert module.data.startswith(script[: script.index(b"(function (root, exports)")])
    assert module.data.rstrip().endswith(
        b"export const { version, connect, groupLabel, HttpError } = SSENotify;"
    )
    assert b"export default SSENotify;" in module.data
    assert client.get("/sse-notify.mjs", headers={"If-None-Match": module.headers["ETag"]}).status_code == 304
    types = client.get("/sse-notify.d.ts")
    assert types.mimetype == "application/typescript"
    assert b"export declare function connect(options: ConnectOptions): Inbox;" in types.data


def test_fresh_stream_starts_with_the_head_cursor(client: FlaskClient, app: Flask) -> None:
    """A stream opened without a cursor sends id: <head> first, so a client that saw no notice can resume."""
    with app.app_context():
        before = notify("alice", {"n": 1})
    response = client.get(f"/connection/alice?token={token_for('alice')}", buffered=False)
    first = next(iter(response.response))
    preamble = rf": connected\n\nid: {before.id}\nretry: \d+\n\nevent: snapshot\n".encode()
    assert re.match(preamble, first), first
    response.close()


def test_stream_opened_during_shutdown_is_sent_away(client: FlaskClient, app: Flask) -> None:
    """A stream opened while the worker stops gets only a shutdown comment and a retry of at least 0.5 s."""
    node = get_state(app).node
    node.ensure_started()
    node.shutdown()
    body = client.get(f"/connection/alice?token={token_for('alice')}").data
    assert body.startswith(b": shutdown\n\nretry: ")
    assert int(body.split(b"retry: ")[1].split(b"\n")[0]) >= 500
    assert b"connected" not in body


def test_idempotency_key_stores_a_publish_once(client: FlaskClient) -> None:
    """A publish repeated with its Idempotency-Key answers the first notice again and stores nothing new."""
    headers = {"Idempotency-Key": "order-42:shipped"}
    first = client.post("/users/alice/notices", json={"n": 1}, headers=headers)
    again = client.post("/users/alice/notices", json={"n": 1}, headers=headers)
    other = client.post("/users/alice/notices", json={"n": 1}, headers={"Idempotency-Key": "order-43"})

    assert (first.status_code, again.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert other.get_json()["id"] > first.get_json()["id"]
    inbox = client.get("/users/alice/notices").get_json()
    assert [item["id"] for item in inbox["notices"]] == [other.get_json()["id"], first.get_json()["id"]]


def test_idempotency_key_on_broadcast_and_batch(client: FlaskClient) -> None:
    """/broadcast and /notices honour Idempotency-Key too, batches as one unit."""
    batch = [{"user_id": "a", "data": {"n": 1}}, {"user_id": "b", "data": {"n": 2}}]
    first = client.post("/notices", json=batch, headers={"Idempotency-Key": "b1"})
    again = client.post("/notices", json=batch, headers={"Idempotency-Key": "b1"})
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    shout = client.post("/broadcast", json={"x": 1}, headers={"Idempotency-Key": "s1"})
    assert (
        client.post("/broadcast", json={"x": 1}, headers={"Idempotency-Key": "s1"}).get_json()
        == shout.get_json()
    )


def test_idempotency_key_reused_for_another_request_is_422(client: FlaskClient) -> None:
    """The same key with other data (or another user) is refused with 422 and stores nothing."""
    client.post("/users/alice/notices", json={"n": 1}, headers={"Idempotency-Key": "k"})
    for path, body in (("/users/alice/notices", {"n": 2}), ("/users/bob/notices", {"n": 1})):
        response = client.post(path, json=body, headers={"Idempotency-Key": "k"})
        assert response.status_code == 422
        assert response.get_json()["error"] == "idempotency_key_reused"
        assert "'k'" in response.get_json()["detail"]
    assert client.get("/users/bob/notices").get_json()["notices"] == []


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 201])
def test_bad_idempotency_key_is_400(client: FlaskClient, key: str) -> None:
    """An Idempotency-Key that is not 1-200 printable ASCII characters is a 400 naming the header."""
    response = client.post("/users/alice/notices", json={"n": 1}, headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.get_json()["detail"]


def test_idempotency_key_ignores_the_order_of_keys(client: FlaskClient) -> None:
    """A retry that sends the same data with its keys in another order is the same request, not a 422."""
    headers = {"Idempotency-Key": "order-7", "Content-Type": "application/json"}
    first = client.post("/users/alice/notices", data='{"a": 1, "b": {"x": 1, "y": 2}}', headers=headers)
    again = client.post("/users/alice/notices", data='{"b": {"y": 2, "x": 1}, "a": 1}', headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]


def test_a_host_apps_own_index_html_does_not_replace_the_demo_page(tmp_path: t.Any) -> None:
    """The demo page's template is namespaced: a host app's templates/index.html stays the host's."""
    from sse_notify import SSENotify

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "index.html").write_text("HOST PAGE")
    app = host_app(tmp_path / "instance", root_path=tmp_path)
    SSENotify(app, url_prefix="/notify")

    @app.get("/")
    def home() -> str:
        return render_template("index.html")

    client = app.test_client()
    assert client.get("/").get_data(as_text=True) == "HOST PAGE"
    demo = client.get("/notify/").get_data(as_text=True)
    assert "HOST PAGE" not in demo
    assert "sse-notify.js" in demo


def test_idempotent_notify_with_keys_that_do_not_sort(app: Flask) -> None:
    """notify(idempotency_key=...) with data whose keys are of several types stores it once, no TypeError."""
    with app.app_context():
        first = notify("alice", {1: "one", "two": 2}, idempotency_key="mixed")
        again = notify("alice", {1: "one", "two": 2}, idempotency_key="mixed")
    assert again == first
