"""Several gunicorn instances on one shared store (Redis, PostgreSQL): delivery across hosts, moving
clients, the store's faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import typing as t

import httpx
import pytest

from sse_notify.brokers import make_broker

from .sse_client import subscribe
from .support import AUTH, PostgresServer, RedisServer, Server, on_targeted_redis, token_for, wait_for

pytestmark = pytest.mark.server


def ids(events: list[t.Any]) -> list[int]:
    """The notice ids of ``events``."""
    return [int(e.id) for e in events]


@pytest.fixture(name="shared_store", params=["redis", "postgresql"])
def _shared_store(request: pytest.FixtureRequest) -> RedisServer | PostgresServer:
    """A store server of this test's own that several hosts share (it may stop and restart it)."""
    server: RedisServer | PostgresServer = request.getfixturevalue(
        "own_redis" if request.param == "redis" else "own_postgres"
    )
    return server


@pytest.fixture(name="two_hosts")
def _two_hosts(
    make_server: t.Callable[..., Server], shared_store: RedisServer | PostgresServer
) -> tuple[Server, Server]:
    """Two separate gunicorn instances (2 workers each) sharing one store, as two hosts would."""
    return (
        make_server(workers=2, store=shared_store.url),
        make_server(workers=2, store=shared_store.url),
    )


def test_a_notice_reaches_streams_on_both_hosts(two_hosts: tuple[Server, Server]) -> None:
    """Published to either instance, a notice reaches the user's streams on both; others get nothing."""
    a, b = two_hosts
    on_a, on_b, bob = (
        subscribe(a.stream_url("alice")),
        subscribe(b.stream_url("alice")),
        subscribe(b.stream_url("bob")),
    )
    sent = [a.publish("alice", {"via": "a"}), b.publish("alice", {"via": "b"}), a.broadcast({"all": 1})]
    for sub in (on_a, on_b):
        assert ids(sub.notices(3)) == [n["id"] for n in sent]
    assert ids(bob.notices(1)) == [sent[2]["id"]]
    bob.nothing(0.3)
    for sub in (on_a, on_b, bob):
        sub.close()


def test_a_client_moving_hosts_resumes_with_nothing_lost(two_hosts: tuple[Server, Server]) -> None:
    """A client that leaves host A for host B, with its Last-Event-ID, gets what it missed, once."""
    a, b = two_hosts
    first = subscribe(a.stream_url("carol"))
    for i in range(2):
        a.publish("carol", {"n": i})
    seen = first.notices(2)
    first.close()
    missed = [a.publish("carol", {"n": i}) for i in range(2, 5)] + [b.broadcast({"n": 5})]
    moved = subscribe(b.stream_url("carol"), last_event_id=seen[-1].id)
    assert ids(moved.notices(4)) == [n["id"] for n in missed]
    live = a.publish("carol", {"n": 6})
    assert ids(moved.notices(1)) == [live["id"]]
    moved.nothing(0.3)
    moved.close()


def test_kick_on_one_host_closes_streams_on_the_other(two_hosts: tuple[Server, Server]) -> None:
    """A kick sent to host A closes the user's stream held by host B."""
    a, b = two_hosts
    on_b = subscribe(b.stream_url("dave"))
    assert a.post("/users/dave/kick", None).status_code == 202
    close = on_b.next("close")
    assert json.loads(close.data) == {"reason": "kicked"}
    on_b.close()


def test_a_store_outage_keeps_streams_open_and_loses_nothing_acknowledged(
    make_server: t.Callable[..., Server], shared_store: RedisServer | PostgresServer
) -> None:
    """The store dies for seconds: publish 503, /healthz down, streams stay open; then everything resumes."""
    server = make_server(workers=2, store=shared_store.url)
    subs = [subscribe(server.stream_url("erin")) for _ in range(4)]
    before = server.publish("erin", {"n": "before"})
    for sub in subs:
        assert ids(sub.notices(1)) == [before["id"]]

    shared_store.kill()
    refused = server.post("/users/erin/notices", {"n": "during"})
    assert refused.status_code == 503
    assert refused.json()["error"] == "store_unavailable"
    # Once the server knows the store is down, it says so at once, not after a connect timeout
    # (PostgreSQL's pool would wait 5 s for a connection it cannot make).
    again = server.post("/users/erin/notices", {"n": "during"})
    assert again.status_code == 503
    assert again.elapsed.total_seconds() < 2.5, again.elapsed
    health = httpx.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json()["store"] == "down"
    time.sleep(2)  # an outage of a few seconds, with heartbeats going on
    shared_store.start()

    # The first publishes after the restart race the feeds' reconnect (backoff up to 5 s):
    # whatever a feed missed live it must catch up from the store.
    after = []
    for i in range(5):
        response = wait_for(
            lambda i=i: (
                (r := server.post("/users/erin/notices", {"n": f"after {i}"})).status_code == 201 and r
            ),
            15,
            "a publish to succeed after the store came back",
        )
        after.append(response.json())
    for sub in subs:
        assert ids(sub.notices(5, timeout=15)) == [n["id"] for n in after]
        sub.nothing(0.3)
        assert sub.connections == 1, "the stream should have stayed open through the outage"
        sub.close()
    assert httpx.get(server.url + "/healthz", timeout=10).json()["store"] == "up"


def test_500_streams_use_a_handful_of_store_connections(
    make_server: t.Callable[..., Server], shared_store: RedisServer | PostgresServer
) -> None:
    """500 SSE clients on one worker hold one feed connection and a small pool, not 500."""
    server = make_server(workers=1, store=shared_store.url)
    sockets = []
    try:
        for i in range(500):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(
                f"GET /connection/u{i}?token={token_for(f'u{i}')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            sockets.append(sock)
        for sock in sockets:
            assert b"200 OK" in sock.recv(4096)
        wait_for(lambda: server.health()["streams"] == 500, 15, "500 open streams")
        published = server.broadcast({"to": "everyone"})
        if isinstance(shared_store, RedisServer):
            clients = shared_store.clients()
            subscribers = [c for c in clients if int(c.get("sub", 0)) > 0]
            assert len(subscribers) == 1, subscribers
            # One pub/sub connection plus the command pool (at most 8), whatever the number of streams.
            assert len(clients) <= 9, [c.get("cmd") for c in clients]
        else:
            # One LISTEN connection plus the pool (pool_size=4 by default).
            connections = shared_store.connections()
            assert 2 <= len(connections) <= 5, connections
            assert set(connections) == {"sse-notify"}
        for sock in sockets[:20]:
            data = b""
            while f"id: {published['id']}".encode() not in data:
                data += sock.recv(65536)
    finally:
        for sock in sockets:
            sock.close()


def test_a_worker_whose_first_stream_meets_an_outage_recovers(
    make_server: t.Callable[..., Server], shared_store: RedisServer | PostgresServer
) -> None:
    """A first stream that meets a store outage is told to retry (200); streams work once it is back."""
    server = make_server(workers=1, store=shared_store.url)
    shared_store.kill()
    with httpx.Client(timeout=10) as client, client.stream("GET", server.stream_url("gina")) as response:
        assert response.status_code == 200
        body = response.read()
    assert b"retry: " in body
    assert b"connected" not in body
    shared_store.start()
    sub = subscribe(server.stream_url("gina"), reconnect=True)  # retries as EventSource would
    sent = wait_for(
        lambda: (r := server.post("/users/gina/notices", {"n": 1})).status_code == 201 and r.json(),
        15,
        "a publish once the store is back",
    )
    assert ids(sub.notices(1, timeout=15)) == [sent["id"]]
    sub.close()


def test_redis_that_lost_its_data_resets_clients(
    make_server: t.Callable[..., Server], own_redis: RedisServer
) -> None:
    """If Redis comes back empty (no persistence), streams close; clients get a reset, then live notices."""
    server = make_server(workers=1, store=own_redis.url)
    sub = subscribe(server.stream_url("hank"), reconnect=True)
    for i in range(3):
        server.publish("hank", {"n": i})
    assert len(sub.notices(3)) == 3
    own_redis.stop()
    shutil.rmtree(own_redis.directory / "appendonlydir")  # as if Redis had run without persistence
    own_redis.start()
    reset = sub.next("reset", timeout=20)
    assert json.loads(reset.data)["reason"] == "unknown"
    sent = server.publish("hank", {"n": "after"})
    assert ids(sub.notices(1, timeout=15)) == [sent["id"]]
    sub.close()


def test_a_worker_killed_while_publishing_loses_nothing_acknowledged(
    make_server: t.Callable[..., Server], shared_store: RedisServer | PostgresServer
) -> None:
    """8 publishers on 2 workers, one worker kill -9'd midway: every notice answered 201 is stored
    once, in cursor order, and replays; the publishes it cut off get an error, never a 201."""
    server = make_server(workers=2, store=shared_store.url)
    acked: list[dict[str, t.Any]] = []
    refused = 0
    lock = threading.Lock()
    halfway = threading.Barrier(9)

    def publisher(who: int) -> None:
        nonlocal refused
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            for n in range(60):
                if n == 30:
                    halfway.wait(20)
                try:
                    answer = client.post("/users/kim/notices", json={"who": who, "n": n})
                except httpx.TransportError:
                    answer = None
                with lock:
                    if answer is not None and answer.status_code == 201:
                        acked.append(answer.json())
                    else:
                        assert answer is None or answer.status_code >= 500, answer.text
                        refused += 1

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    halfway.wait(20)
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    store = make_broker(shared_store.url)
    stored = store.replay("kim", "0").notices  # all of them, read from the store itself
    store.close()
    ids = [n.id for n in stored]
    assert ids == sorted(set(ids)), "stored out of order or twice"
    assert {n["id"] for n in acked} <= set(ids), "a notice answered 201 is missing"
    assert len({(n.data["who"], n.data["n"]) for n in stored}) == len(stored), "a notice stored twice"
    assert len(acked) + refused == 8 * 60
    assert len(acked) > 8 * 30, "the other worker should have gone on taking publishes"
    # And a client resuming from before them all gets every one, in order.
    resumed = subscribe(server.stream_url("kim"), last_event_id="0")
    try:
        assert [int(e.id) for e in resumed.notices(len(stored), timeout=20)] == ids
    finally:
        resumed.close()


def test_redis_workers_subscribe_to_the_users_they_hold(
    make_server: t.Callable[..., Server], redis_server: RedisServer
) -> None:
    """Each worker's feed subscribes to the users it holds streams of, and leaves them after the linger."""
    server, subscribers = on_targeted_redis(make_server, redis_server)
    users = [f"u{i}" for i in range(6)]
    subs = {user: subscribe(server.stream_url(user)) for user in users}
    try:
        # Each stream is open (a 200) only once its worker follows the user: one worker holds each
        # user's one stream, nobody holds "nobody", and each worker with a stream takes broadcasts.
        assert subscribers(*users, "nobody") == [1] * 6 + [0]
        assert subscribers("*")[0] in (1, 2)
        subs.pop("u0").close()
        wait_for(lambda: subscribers("u0") == [0], 10, "the worker to leave u0 after the linger")
        assert subscribers(*users[1:]) == [1] * 5
        sent = server.publish("u1", {"n": 1})
        assert ids(subs["u1"].notices(1)) == [sent["id"]]
        back = subscribe(server.stream_url("u0"))
        subs["u0"] = back
        wait_for(lambda: subscribers("u0") == [1], 10, "a worker to follow u0 again")
        again = server.publish("u0", {"n": 2})
        assert ids(back.notices(1)) == [again["id"]]
    finally:
        for sub in subs.values():
            sub.close()
