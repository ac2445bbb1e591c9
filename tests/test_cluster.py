"""Redis Cluster under real servers: two gunicorn instances on one cluster, a primary killed while
notices flow, a slot moved during traffic. Every acknowledged notice must reach its streams once."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from .browser import TIMEOUT, query_of, stream_requests, streams_of
from .sse_client import Subscriber, subscribe
from .support import AUTH, PUBLISH_KEY, RedisCluster, Server, wait_for

pytestmark = pytest.mark.server


def cluster_store(cluster: RedisCluster, tmp_path: Path) -> str:
    """The cluster's URL with a prefix of this test's own (tests share the session's cluster)."""
    return f"{cluster.url}?prefix=c{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]}:"


def notice_ids(events: t.Iterable[t.Any]) -> list[int]:
    """The notice ids of these events (each event's ``id:`` line is a position, its data has the id)."""
    return [int(e.json()["id"]) for e in events]


def test_two_instances_deliver_and_resume_across_the_cluster(
    make_server: t.Callable[..., Server], redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A stream on one instance gets what is published on the other; a resume from its id replays once."""
    store = cluster_store(redis_cluster, tmp_path)
    a, b = make_server(workers=2, store=store), make_server(workers=2, store=store)
    alice = subscribe(a.stream_url("alice"))
    bob = subscribe(a.stream_url("bob"))
    sent = [b.publish("alice", {"n": 1}), b.broadcast({"n": 2}), a.publish("alice", {"n": 3})]
    got = alice.notices(3)
    assert sorted(notice_ids(got)) == [n["id"] for n in sent]
    assert notice_ids(bob.notices(1)) == [sent[1]["id"]]
    bob.nothing(0.3)
    # Each frame's id is the stream's position per audience: user, then broadcasts.
    assert [len(e.id.split(".")) for e in got] == [2, 2, 2]
    last = got[-1].id
    alice.close()

    missed = [b.broadcast({"n": 4}), a.publish("alice", {"n": 5}), b.publish("alice", {"n": 6})]
    back = subscribe(b.stream_url("alice"), last_event_id=last)
    assert sorted(notice_ids(back.notices(3))) == [n["id"] for n in missed]
    back.nothing(0.3)
    back.close()
    bob.close()


class Traffic:
    """Notices POSTed one after another, round the users, each retried (same Idempotency-Key) until 201."""

    def __init__(self, server: Server, users: list[str]) -> None:
        self.server = server
        self.users = users
        self.acked: dict[str, list[int]] = {user: [] for user in users}
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, headers=AUTH, timeout=30) as client:
            n = 0
            while not self._stop.is_set():
                user = self.users[n % len(self.users)]
                while True:  # a publisher retries what was not acknowledged, with its key
                    try:
                        response = client.post(
                            f"/users/{user}/notices", json={"n": n}, headers={"Idempotency-Key": f"n{n}"}
                        )
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 201:
                        self.acked[user].append(response.json()["id"])
                        break
                    self.refused += 1
                    time.sleep(0.05)
                n += 1
                time.sleep(0.005)

    def stop(self) -> dict[str, list[int]]:
        """Stop after the notice in flight; what was acknowledged, per user."""
        self._stop.set()
        self._thread.join(60)
        return self.acked


def all_delivered(subs: dict[str, Subscriber], acked: dict[str, list[int]]) -> None:
    """Each stream gets every notice acknowledged for its user, exactly once."""
    for user, sub in subs.items():
        got: list[int] = []
        deadline = time.monotonic() + 20
        while len(got) < len(acked[user]) and time.monotonic() < deadline:
            got += notice_ids([sub.next("notice", max(0.1, deadline - time.monotonic()))])
        sub.nothing(0.3)
        assert sorted(got) == sorted(acked[user]), user
        assert got == sorted(got), f"{user}'s notices out of order"


@contextlib.contextmanager
def under_traffic(
    make_server: t.Callable[..., Server], cluster: RedisCluster, tmp_path: Path, users: int
) -> t.Iterator[str]:
    """A server (2 workers) on ``cluster``, a stream per user and notices POSTed round the users meanwhile;
    yields the key of the first user's log. At the end, each stream got its user's acknowledged notices."""
    store = cluster_store(cluster, tmp_path)
    server = make_server(workers=2, store=store)
    names = [f"user{i}" for i in range(users)]
    subs = {user: subscribe(server.stream_url(user), reconnect=True) for user in names}
    traffic = Traffic(server, names)
    time.sleep(0.5)
    yield f"{store.rsplit('prefix=', 1)[1]}{{user0}}:log"
    time.sleep(1.0)
    acked = traffic.stop()
    assert all(len(ids) > 5 for ids in acked.values()), acked
    all_delivered(subs, acked)
    for sub in subs.values():
        sub.close()


def test_a_primary_killed_while_notices_flow_loses_nothing(
    make_server: t.Callable[..., Server], own_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A primary killed under traffic: its replica takes over; each acknowledged notice reaches its stream."""
    with under_traffic(make_server, own_cluster, tmp_path, users=6) as key:
        victim = own_cluster.primary_of(key)
        victim.stop(signal.SIGKILL)
        wait_for(own_cluster.healthy, 30, "a replica to take over")
        time.sleep(0.5)
        victim.start()  # back as a replica of its old shard: writes are acknowledged by a replica again
        wait_for(own_cluster.healthy, 30, "the old primary back as a replica")


def test_a_slot_moved_during_traffic_loses_nothing(
    make_server: t.Callable[..., Server], own_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A user's slot moved to another primary under traffic (a resharding): nothing acknowledged is lost."""
    with under_traffic(make_server, own_cluster, tmp_path, users=4) as key:
        source = own_cluster.primary_of(key)
        target = next(n for n in own_cluster.nodes if n is not source and own_cluster.role(n) == "master")
        own_cluster.move_slot(key, target)
        assert own_cluster.primary_of(key) is target


@pytest.mark.browser
def test_the_browser_client_resumes_from_its_position_on_the_cluster(
    make_server: t.Callable[..., Server], redis_cluster: RedisCluster, tmp_path: Path, context: BrowserContext
) -> None:
    """sse-notify.js in Chromium: a new leader tab resumes from the position the stream sent, once each."""
    server = make_server(workers=2, store=cluster_store(redis_cluster, tmp_path))
    errors: list[str] = []
    for _ in range(2):
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(f"{server.url}/#key={quote(PUBLISH_KEY, safe='')}")
        tab.evaluate(
            "() => { window.arrived = []; demo.inbox.on('notice', (n) => arrived.push(n.data.title)); }"
        )
        expect(tab.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    server.publish("alice", {"title": "mine"})
    server.broadcast({"title": "everyone's"})
    pages = context.pages
    for tab in pages:
        expect(tab.locator("#notices .title")).to_have_count(2, timeout=TIMEOUT)
    [leader] = [tab for tab in pages if tab.evaluate("demo.inbox.isLeader")]
    [other] = [tab for tab in pages if tab is not leader]
    position = leader.evaluate("demo.inbox.lastEventId")
    assert len(position.split(".")) == 2, position  # alice's position, then the broadcasts'
    requests = stream_requests(context)

    leader.close()
    server.broadcast({"title": "while moving"})
    server.publish("alice", {"title": "also while moving"})
    expect(other.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(other.locator("#notices .title")).to_have_count(4, timeout=TIMEOUT)
    assert sorted(other.evaluate("arrived")) == sorted(
        ["mine", "everyone's", "while moving", "also while moving"]
    )
    [stream] = streams_of(requests)
    assert query_of(stream)["last_event_id"] == position, stream
    assert not errors, errors


def test_a_worker_holds_one_pubsub_connection_per_primary(
    make_server: t.Callable[..., Server], redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """30 users' streams on one worker: one sharded pub/sub connection per primary, and a small pool."""
    server = make_server(workers=1, store=cluster_store(redis_cluster, tmp_path))
    subs = [subscribe(server.stream_url(f"user{i}")) for i in range(30)]
    primaries = [node for node in redis_cluster.nodes if redis_cluster.role(node) == "master"]
    followed = 0
    for node in primaries:
        clients = node.clients()
        pubsub = [c for c in clients if int(c.get("ssub", 0)) > 0]
        assert len(pubsub) == 1, pubsub
        followed += int(pubsub[0]["ssub"])
        assert len(clients) <= 1 + 16, clients  # the pub/sub connection and at most the pool
    assert followed == 30 + 2  # every user, the broadcasts and the control records
    with ThreadPoolExecutor(len(subs)) as pool:  # each close waits for its reader's next heartbeat
        list(pool.map(Subscriber.close, subs))
