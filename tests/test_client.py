"""sse_notify.client against real gunicorn servers: delivery, errors, retries, idempotency, timeouts.

Faults are real too: a port nobody listens on yet, a TCP proxy that loses an answer after the
server sent it, a Redis that stops, a listener that never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import httpx
import pytest

import sse_notify.errors
from sse_notify.client import (
    AsyncClient,
    Client,
    ClientError,
    IdempotencyKeyReused,
    NotFound,
    RateLimited,
    ServerUnavailable,
    Unauthorized,
)
from sse_notify.delivery import Receipt
from sse_notify.notices import Notice
from sse_notify.presence import Presence

from .sse_client import Subscriber, subscribe
from .support import AUTH, PUBLISH_KEY, ROOT, RedisServer, Server, free_port, wait_for

pytestmark = pytest.mark.server

MakeServer = t.Callable[..., Server]
MakeClient = t.Callable[..., Client]


class BlockingAsyncClient:
    """An :class:`AsyncClient` that a test drives as it drives a :class:`Client`: each call runs to
    its end on one event loop of its own, so every test of the client holds for both."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client = AsyncClient(*args, **kwargs)
        except BaseException:
            self._loop.close()
            raise

    def __getattr__(self, name: str) -> t.Any:
        method = getattr(self._client, name)

        def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            result = method(*args, **kwargs)
            assert inspect.isawaitable(result), f"AsyncClient.{name} should be a coroutine function"
            return self._loop.run_until_complete(result)

        return call

    def __enter__(self) -> BlockingAsyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@pytest.fixture(name="make_client", params=["sync", "async"])
def _make_client(request: pytest.FixtureRequest) -> MakeClient:
    """Client, or AsyncClient driven to the end of each call: the same tests hold for both."""
    return t.cast(MakeClient, Client if request.param == "sync" else BlockingAsyncClient)


class Proxy:
    """A TCP proxy in front of a server that can lose answers, and counts the requests it forwards.

    Each of the first ``lose`` connections forwards the request, waits until the server has
    answered (so the server has done the work), then closes the client's connection without
    relaying a byte of the answer: what a reset connection or a crashed load balancer does.
    """

    REQUEST_LINE = re.compile(rb"(?:GET|POST) /\S* HTTP/1\.1\r\n")

    def __init__(self, upstream_port: int, lose: int = 0) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._sent: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        """How many requests reached the server through the proxy."""
        with self._lock:
            return sum(len(self.REQUEST_LINE.findall(bytes(sent))) for sent in self._sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                lose = self.lose > 0
                self.lose -= lose
                sent = bytearray()
                self._sent.append(sent)
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, sent), daemon=True).start()
            answer = self._lose_answer if lose else self._pump
            threading.Thread(target=answer, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _lose_answer(upstream: socket.socket, client: socket.socket, _: None) -> None:
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer:  # the server has answered: the work is done
                data = upstream.recv(65536)
                if not data:
                    break
                answer += data
        # shutdown first: the other direction's pump is blocked in recv() on this socket, and a
        # plain close() would then send nothing until it returns (the client waited for its timeout).
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        client.close()
        upstream.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture(name="proxy_to")
def _proxy_to() -> t.Iterator[t.Callable[..., Proxy]]:
    """Start proxies in front of servers; every one is closed at the end."""
    proxies: list[Proxy] = []

    def make(server: Server, lose: int = 0) -> Proxy:
        proxies.append(Proxy(server.port, lose))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def inbox(server: Server, user_id: str) -> dict[str, t.Any]:
    """The user's inbox as the server lists it (with the publish key)."""
    response = httpx.get(f"{server.url}/users/{user_id}/notices", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return t.cast(dict[str, t.Any], response.json())


def received(sub: Subscriber, count: int) -> list[dict[str, t.Any]]:
    """The next ``count`` notices on ``sub``, as JSON, with the event id matching the notice id."""
    notices = []
    for event in sub.notices(count):
        body = json.loads(event.data)
        assert event.id == str(body["id"])
        notices.append(body)
    return notices


def assert_error(error: ClientError, status: int | None, code: str | None, attempts: int) -> None:
    """``error`` has this status, server error code and attempt count, and its message has the detail."""
    assert (error.status, error.error, error.attempts) == (status, code, attempts)
    assert error.detail
    assert error.detail in str(error)


# -- the API, on a real server ---------------------------------------------------------------


def test_publish_calls_reach_the_stream_and_return_the_stored_notices(
    live_server: Server, make_client: MakeClient
) -> None:
    """publish, publish_many and broadcast reach the user's stream; each returns the server's notices."""
    alice = subscribe(live_server.stream_url("alice"))
    with make_client(live_server.url, PUBLISH_KEY) as client:
        one = client.publish("alice", {"title": "Hello", "n": 1})
        many = client.publish_many([("alice", {"n": 2}), ("bob", {"n": 3}), ("alice", {"n": 4})])
        everyone = client.broadcast({"title": "maintenance at 22:00"})
    assert {r.status for r in (one, *many, everyone)} == {"delivered"}
    stored = [t.cast(Notice, r.notice) for r in (one, *many, everyone)]
    assert (stored[0].user_id, stored[0].data) == ("alice", {"title": "Hello", "n": 1})
    expected = [("alice", {"n": 2}), ("bob", {"n": 3}), ("alice", {"n": 4})]
    assert [(n.user_id, n.data) for n in stored[1:4]] == expected
    assert stored[4].is_broadcast
    assert [n.id for n in stored] == sorted({n.id for n in stored})
    assert received(alice, 4) == [stored[i].to_dict() for i in (0, 1, 3, 4)]
    alice.nothing(0.3)
    alice.close()


def test_marks_change_the_unread_count(live_server: Server, make_client: MakeClient) -> None:
    """mark_read, mark_unread and mark_all_read change the inbox's unread count; a missing notice is 404."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        sent = [t.cast(Notice, client.publish("carol", {"n": n}).notice) for n in range(3)]
        assert inbox(live_server, "carol")["unread"] == 3
        assert client.mark_read("carol", sent[0].id) == 2
        assert inbox(live_server, "carol")["unread"] == 2
        assert client.mark_unread("carol", sent[0].id) == 3
        assert client.mark_all_read("carol") == sent[-1].id
        assert inbox(live_server, "carol")["unread"] == 0
        with pytest.raises(NotFound) as caught:
            client.mark_read("dave", sent[0].id)
    assert_error(caught.value, 404, "not_found", 1)


def test_a_token_with_topics_follows_them_and_notify_topic_reaches_the_stream(
    live_server: Server, make_client: MakeClient
) -> None:
    """issue_token(topics=) lets a stream follow them; notify_topic's notice reaches it, with its topic."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        token = client.issue_token("fay", ttl=60, topics=["match-*"])
        sub = Subscriber(f"{live_server.url}/connection/fay?token={token.token}&topics=match-42")
        try:
            assert sub.opened.wait(10), "the issued token did not open a stream with its topic"
            receipt = client.notify_topic("match-42", {"goal": 1}, category="score")
            assert receipt.status == "delivered"
            assert receipt.notice is not None
            assert (receipt.notice.topic, receipt.notice.user_id) == ("match-42", None)
            assert received(sub, 1) == [receipt.notice.to_dict()]
        finally:
            sub.close()


def test_an_issued_token_opens_a_stream_and_a_kick_closes_it(
    live_server: Server, make_client: MakeClient
) -> None:
    """issue_token's token opens the user's stream; kick ends it with a close event (kicked)."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        token = client.issue_token("erin", ttl=60)
        assert token.user_id == "erin"
        assert time.time() + 50 < token.expires_at <= time.time() + 61
        sub = Subscriber(f"{live_server.url}/connection/erin?token={token.token}")
        assert sub.opened.wait(10), "the issued token did not open a stream"
        sent = client.publish("erin", {"n": 1}).notice
        assert sent is not None
        assert received(sub, 1) == [sent.to_dict()]
        client.kick("erin")
    assert json.loads(sub.next("close").data) == {"reason": "kicked"}
    wait_for(lambda: live_server.health()["streams"] == 0, 10, "the kicked stream to end")
    sub.close()


def test_presence_counts_open_streams(live_server: Server, make_client: MakeClient) -> None:
    """presence says online with the number of streams while some are open, offline once kicked."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        assert client.presence("fred") == Presence("fred", streams=0)
        assert not client.presence("fred").online
        subs = [subscribe(live_server.stream_url("fred")) for _ in range(2)]
        wait_for(lambda: client.presence("fred").streams == 2, 10, "two streams counted")
        assert client.presence("fred").online
        client.kick("fred")
        wait_for(lambda: not client.presence("fred").online, 10, "fred to be offline after the kick")
    for sub in subs:
        sub.close()


def test_user_ids_travel_as_one_path_segment(live_server: Server, make_client: MakeClient) -> None:
    """User ids with ``@ : + .``, even ``..`` and ``.``, reach that user and no other route."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        for user_id in ("a@b.example", "x:y+z", "..", "."):
            notice = t.cast(Notice, client.publish(user_id, {"to": user_id}).notice)
            assert (notice.user_id, notice.data) == (user_id, {"to": user_id})
            assert client.mark_read(user_id, notice.id) == 0


# -- errors that are not retried -------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "key", "expected", "status", "error"),
    [
        pytest.param("bad id", PUBLISH_KEY, ClientError, 400, "invalid_user_id", id="bad-user-id"),
        pytest.param("alice", "not-the-key", Unauthorized, 403, "forbidden", id="wrong-key"),
    ],
)
def test_a_4xx_is_not_retried_and_carries_the_server_detail(
    live_server: Server,
    proxy_to: t.Callable[..., Proxy],
    user_id: str,
    key: str,
    expected: type[ClientError],
    status: int,
    error: str,
    make_client: MakeClient,
) -> None:
    """A 400 or 403 reaches the server once and raises with the server's status, code and detail."""
    proxy = proxy_to(live_server)
    with make_client(proxy.url, key, retries=3, backoff=0.01) as client, pytest.raises(expected) as caught:
        client.publish(user_id, {"n": 1})
    assert_error(caught.value, status, error, 1)
    assert proxy.requests == 1
    assert inbox(live_server, "alice")["notices"] == []


def test_a_bad_idempotency_key_is_refused_before_sending(
    live_server: Server, make_client: MakeClient
) -> None:
    """An idempotency key the server would refuse (empty, a space, too long) raises ValueError at once."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        for key in ("", "has space", "x" * 201, "caf\u00e9"):
            with pytest.raises(ValueError, match="Idempotency-Key must be"):
                client.publish("alice", {"n": 1}, idempotency_key=key)
    assert inbox(live_server, "alice")["notices"] == []


@pytest.mark.parametrize(
    ("key", "setting"),
    [
        pytest.param(" ", {}, id="empty-key"),
        pytest.param("k", {"retries": -1}, id="retries"),
        pytest.param("k", {"backoff": -1.0}, id="backoff"),
        pytest.param("k", {"max_backoff": -1.0}, id="max_backoff"),
    ],
)
def test_bad_settings_are_refused_at_construction(
    key: str, setting: dict[str, float], make_client: MakeClient
) -> None:
    """An empty publish key or a negative retries, backoff or max_backoff raises ValueError."""
    with pytest.raises(ValueError, match=r"publish_key is empty|must not be negative"):
        make_client("http://127.0.0.1:1", key, **setting)  # type: ignore[arg-type]


# -- retries -----------------------------------------------------------------------------------


def test_a_publish_waits_for_a_server_that_is_still_starting(tmp_path: Path, make_client: MakeClient) -> None:
    """A publish sent before the server listens is retried on connection errors until it is stored."""
    server = Server(str(tmp_path / "notices.sqlite3"), port=free_port())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    starter = threading.Timer(0.7, server.start)
    starter.start()
    try:
        with make_client(server.url, PUBLISH_KEY, retries=60, backoff=0.1, max_backoff=0.5) as client:
            notice = client.publish("gina", {"n": 1})
        starter.join()
        assert [n["id"] for n in inbox(server, "gina")["notices"]] == [notice.id]
    finally:
        starter.cancel()
        starter.join()
        server.stop(timeout=15)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: [c.publish("hana", {"n": 1})], id="publish"),
        pytest.param(lambda c: c.publish_many([("hana", {"n": 1}), ("ivan", {"n": 2})]), id="publish_many"),
        pytest.param(lambda c: [c.broadcast({"n": 1})], id="broadcast"),
    ],
)
def test_a_publish_whose_answer_is_lost_is_stored_once(
    live_server: Server,
    proxy_to: t.Callable[..., Proxy],
    call: t.Callable[[Client], list[Receipt]],
    make_client: MakeClient,
) -> None:
    """The answer of a stored publish is lost; the retry (same key) stores nothing new and returns it."""
    proxy = proxy_to(live_server, lose=1)
    with make_client(proxy.url, PUBLISH_KEY, retries=3, backoff=0.05) as client:
        notices = call(client)
    assert proxy.requests == 2, "the first answer should have been lost, and the request sent again"
    stored = inbox(live_server, "hana")["notices"]
    assert [n["id"] for n in stored] == [notices[0].id]
    assert stored[0]["created_at"] == notices[0].created_at


def test_without_a_key_a_lost_answer_means_a_duplicate(
    live_server: Server, proxy_to: t.Callable[..., Proxy]
) -> None:
    """Control: the same lost answer, retried by hand without an idempotency key, stores the notice twice."""
    proxy = proxy_to(live_server, lose=1)
    with httpx.Client(base_url=proxy.url, headers=AUTH, timeout=10) as raw:
        with pytest.raises(httpx.TransportError):
            raw.post("/users/hana/notices", json={"n": 1})
        assert raw.post("/users/hana/notices", json={"n": 1}).status_code == 201
    assert proxy.requests == 2
    assert [n["data"] for n in inbox(live_server, "hana")["notices"]] == [{"n": 1}, {"n": 1}]


def test_the_same_key_returns_the_original_notice(live_server: Server, make_client: MakeClient) -> None:
    """Two calls with one key (a retried task) store one notice and both return it."""
    with make_client(live_server.url, PUBLISH_KEY) as client:
        first = client.publish("jo", {"n": 1}, idempotency_key="task-1234")
        again = client.publish("jo", {"n": 1}, idempotency_key="task-1234")
        batch = client.publish_many([("jo", {"n": 2})], idempotency_key="task-5678")
        batch_again = client.publish_many([("jo", {"n": 2})], idempotency_key="task-5678")
    assert again == first
    assert batch_again == batch
    assert [n["id"] for n in inbox(live_server, "jo")["notices"]] == [batch[0].id, first.id]


def test_a_key_reused_for_different_data_is_refused(live_server: Server, make_client: MakeClient) -> None:
    """The same key with other data raises IdempotencyKeyReused (422, not retried); nothing new is stored."""
    with make_client(live_server.url, PUBLISH_KEY, retries=3) as client:
        first = client.publish("kim", {"n": 1}, idempotency_key="job-42")
        with pytest.raises(IdempotencyKeyReused) as caught:
            client.publish("kim", {"n": 2}, idempotency_key="job-42")
    assert_error(caught.value, 422, "idempotency_key_reused", 1)
    assert caught.value.idempotency_key == "job-42"
    assert isinstance(caught.value, sse_notify.errors.IdempotencyKeyReused)
    assert [n["id"] for n in inbox(live_server, "kim")["notices"]] == [first.id]


def test_a_store_outage_is_retried_then_reported(
    make_server: MakeServer, own_redis: RedisServer, make_client: MakeClient
) -> None:
    """Redis down: a publish is retried on 503 and raises ServerUnavailable with the server's detail."""
    server = make_server(store=own_redis.url)
    own_redis.stop()
    client = make_client(server.url, PUBLISH_KEY, retries=2, backoff=0.05)
    with client, pytest.raises(ServerUnavailable) as caught:
        client.publish("lee", {"n": 1}, idempotency_key="outage-1")
    assert_error(caught.value, 503, "store_unavailable", 3)
    assert caught.value.idempotency_key == "outage-1"


def test_a_store_back_within_the_retries_takes_the_publish(
    make_server: MakeServer, own_redis: RedisServer, make_client: MakeClient
) -> None:
    """Redis restarts while a publish is being retried on 503: the publish succeeds, stored once."""
    server = make_server(store=own_redis.url)
    own_redis.stop()
    restarter = threading.Timer(1.0, own_redis.start)
    restarter.start()
    try:
        with make_client(server.url, PUBLISH_KEY, retries=80, backoff=0.1, max_backoff=0.5) as client:
            notice = client.publish("lee", {"n": 1})
    finally:
        restarter.join()
    assert [n["id"] for n in inbox(server, "lee")["notices"]] == [notice.id]


def test_a_rate_limit_is_waited_out(make_server: MakeServer, make_client: MakeClient) -> None:
    """Over the key's rate limit: without retries RateLimited (with Retry-After); with them, all succeed."""
    server = make_server(SSE_NOTIFY_RATE_LIMIT="2/second")
    with make_client(server.url, PUBLISH_KEY, retries=0) as client:
        caught = None
        for n in range(20):  # well over 2 within one second, whatever the machine's speed
            try:
                client.publish("max", {"n": n})
            except RateLimited as exc:
                caught = exc
                break
    assert caught is not None, "20 quick publishes should exceed 2 a second"
    assert (caught.status, caught.error, caught.attempts) == (429, "rate_limited", 1)
    assert caught.retry_after is not None
    assert caught.retry_after >= 1
    before = len(inbox(server, "max")["notices"])
    with make_client(server.url, PUBLISH_KEY, retries=10, max_backoff=2) as client:
        sent = [client.publish("max", {"n": n}) for n in range(5)]
    assert [n["id"] for n in inbox(server, "max")["notices"][:5]] == [n.id for n in reversed(sent)]
    assert len(inbox(server, "max")["notices"]) == before + 5


def test_a_server_that_never_answers_times_out(make_client: MakeClient) -> None:
    """A listener that accepts and never answers: each attempt times out, then ServerUnavailable."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        client = make_client(url, PUBLISH_KEY, timeout=0.3, retries=1, backoff=0)
        with client, pytest.raises(ServerUnavailable) as caught:
            client.publish("noa", {"n": 1})
    finally:
        listener.close()
        for sock in held:
            sock.close()
    error = caught.value
    assert_error(error, None, None, 2)
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert "ReadTimeout" in str(error)
    assert time.monotonic() - started >= 0.5  # two attempts that each waited for the timeout


# -- importing -------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def test_importing_the_client_needs_no_gevent() -> None:
    """Importing sse_notify.client loads httpx but neither gevent nor greenlet (a plain worker can use it)."""
    result = _python(
        "import sys, sse_notify.client\n"
        "print(sorted({m.partition('.')[0] for m in sys.modules} & {'gevent', 'greenlet', 'httpx'}))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['httpx']"


def test_importing_the_client_without_httpx_says_what_to_install() -> None:
    """Without httpx, importing sse_notify.client raises ImportError naming the sse-notify[client] extra."""
    result = _python("import sys\nsys.modules['httpx'] = None\nimport sse_notify.client")
    assert result.returncode != 0
    assert 'pip install "sse-notify[client]"' in result.stderr


def test_options_preferences_and_removal_through_the_client(
    live_server: Server, make_client: MakeClient
) -> None:
    """Delivery options as keywords, receipts back; preferences and removal as the HTTP API has them."""
    from datetime import datetime, timedelta, timezone

    with make_client(live_server.url, PUBLISH_KEY) as client:
        body = {"categories": {"promo": {"in_app": False}}}
        assert client.set_preferences("zoe", body)["categories"] == body["categories"]
        assert client.preferences("zoe")["categories"] == body["categories"]
        muted = client.publish("zoe", {"n": 1}, category="promo")
        assert (muted.status, muted.reason, muted.id) == ("suppressed", "category_muted", None)
        later = client.publish("zoe", {"n": 2}, delay=60, critical=True)
        assert (later.status, later.data) == ("scheduled", {"n": 2})
        assert later.due is not None
        assert abs(later.due - time.time() - 60) < 5
        client.remove("zoe", t.cast(str, later.scheduled_id))
        with pytest.raises(NotFound):
            client.remove("zoe", t.cast(str, later.scheduled_id))
        at = datetime.now(timezone.utc) + timedelta(minutes=5)
        assert [r.status for r in client.publish_many([("zoe", {}), ("yan", {})], send_at=at)] == [
            "scheduled",
            "scheduled",
        ]
        with pytest.raises(TypeError, match="colour"):
            client.publish("zoe", {}, colour="red")
    assert inbox(live_server, "zoe")["notices"] == []


def test_contacts_through_the_client(live_server: Server, make_client: MakeClient) -> None:
    """set_contacts keeps, contacts reads, None removes; a bad address is the server's 400."""
    from sse_notify.errors import ClientError

    with make_client(live_server.url, PUBLISH_KEY) as client:
        assert client.contacts("zoe") == {}
        assert client.set_contacts("zoe", email="zoe@example.com") == {"email": "zoe@example.com"}
        assert client.contacts("zoe") == {"email": "zoe@example.com"}
        with pytest.raises(ClientError) as caught:
            client.set_contacts("zoe", email="not an address")
        assert caught.value.status == 400
        assert client.set_contacts("zoe", email=None) == {}


def test_the_async_client_waits_out_an_outage_without_blocking_its_loop(
    make_server: MakeServer, own_redis: RedisServer
) -> None:
    """While an AsyncClient backs off between retries (the store down, 503), other tasks of its
    loop keep running; the publish succeeds once the store is back."""
    server = make_server(store=own_redis.url)
    own_redis.stop()
    restarter = threading.Timer(1.0, own_redis.start)

    async def scenario() -> tuple[Receipt, int]:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        async with AsyncClient(server.url, PUBLISH_KEY, retries=80, backoff=0.1, max_backoff=0.3) as client:
            receipt = await client.publish("uma", {"n": 1})
        done.set()
        await ticker
        return receipt, ticks

    restarter.start()
    try:
        receipt, ticks = asyncio.run(scenario())
    finally:
        restarter.join()
    assert receipt.status == "delivered"
    assert [n["id"] for n in inbox(server, "uma")["notices"]] == [receipt.id]
    assert ticks >= 50, f"the loop ran only {ticks} times in the second of backoff"
