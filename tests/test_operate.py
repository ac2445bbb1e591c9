"""Operating a server: /metrics over several workers, presence across workers and hosts, JSON logs.

Every test runs real ``gunicorn -k gevent`` servers (the repository's
``gunicorn.conf.py`` sets up prometheus_client's multiprocess directory) and
reads metrics with prometheus_client's own text parser.
"""

from __future__ import annotations

import json
import os
import signal
import time
import typing as t
from pathlib import Path

import httpx
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from sse_notify import create_app, presence
from sse_notify.service import get_state

from .sse_client import Subscriber
from .support import AUTH, RedisServer, Server, scrape, token_for, wait_for

pytestmark = pytest.mark.server

FAST_PRESENCE = {"SSE_NOTIFY_PRESENCE_INTERVAL": "0.2"}  # a killed worker is forgotten after 2 s


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when it is not there yet)."""
    return scrape(server).get((name, tuple(sorted(labels.items()))), 0.0)


def steady(server: Server, name: str, expected: float, **labels: str) -> None:
    """Wait until ``name`` reads ``expected``, then check that five more scrapes (any worker) agree."""
    wait_for(lambda: metric(server, name, **labels) == expected, 10, f"{name}{labels} == {expected}")
    assert [metric(server, name, **labels) for _ in range(5)] == [expected] * 5


def presence_of(server: Server, user_id: str, **kw: t.Any) -> httpx.Response:
    """GET the user's presence (with the publish key unless headers are given)."""
    kw.setdefault("headers", AUTH)
    return httpx.get(f"{server.url}/users/{user_id}/presence", timeout=10, **kw)


def streams_of(server: Server, user_id: str) -> int:
    """The user's open streams, as the presence endpoint reports them."""
    response = presence_of(server, user_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["online"] is (body["streams"] > 0)
    return t.cast(int, body["streams"])


def socket_count(pid: int) -> int:
    """Sockets a process holds open (its streams, and a few of its own)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def settled_count(subscribers: list[Subscriber]) -> tuple[int] | None:
    """How many subscribers are still reading, if that number holds for half a second (else None)."""
    before = sum(s._thread.is_alive() for s in subscribers)
    time.sleep(0.5)
    after = sum(s._thread.is_alive() for s in subscribers)
    return (after,) if after == before else None


def test_metrics_add_up_over_workers(make_server: t.Callable[..., Server]) -> None:
    """/metrics on any of 2 workers counts every stream, publish, delivery, replay, reconnect and eviction."""
    server = make_server(workers=2)
    subscribers = [Subscriber(server.stream_url(user)) for user in ("alice", "alice", "bob", "carol")]
    try:
        for sub in subscribers:
            assert sub.opened.wait(10)
        steady(server, "sse_notify_streams_open", 4)
        assert metric(server, "sse_notify_streams_opened_total") == 4
        assert metric(server, "sse_notify_reconnects_total") == 0

        sent = [server.publish("alice", {"n": n}) for n in range(3)]
        for sub in subscribers[:2]:
            assert [json.loads(e.data)["id"] for e in sub.notices(3)] == [n["id"] for n in sent]
        steady(server, "sse_notify_notices_delivered_total", 6)  # 3 notices x 2 streams of alice
        assert metric(server, "sse_notify_notices_published_total", kind="user") == 3
        assert metric(server, "sse_notify_publish_seconds_count") == 3
        server.broadcast({"all": True})
        steady(server, "sse_notify_notices_published_total", 1, kind="broadcast")

        resumed = Subscriber(server.stream_url("alice"), last_event_id=str(sent[0]["id"]))
        subscribers.append(resumed)
        assert [json.loads(e.data)["id"] for e in resumed.notices(2)] == [n["id"] for n in sent[1:]]
        steady(server, "sse_notify_notices_replayed_total", 3)  # sent[1], sent[2] and the broadcast
        assert metric(server, "sse_notify_reconnects_total") == 1

        assert server.post("/users/bob/kick", {}).status_code == 202
        assert subscribers[2].next("close")
        steady(server, "sse_notify_evictions_total", 1, reason="kicked")
        steady(server, "sse_notify_streams_closed_total", 1, reason="kicked")
    finally:
        for sub in subscribers:
            sub.close()
    steady(server, "sse_notify_streams_open", 0)
    assert metric(server, "sse_notify_streams_closed_total", reason="disconnected") == 4


def test_metrics_forget_the_streams_of_a_killed_worker(make_server: t.Callable[..., Server]) -> None:
    """After kill -9 of a worker, the open-streams gauge counts only the streams still open."""
    server = make_server(workers=2)
    subscribers = [Subscriber(server.stream_url(f"user{i}")) for i in range(8)]
    try:
        for sub in subscribers:
            assert sub.opened.wait(10)
        steady(server, "sse_notify_streams_open", 8)
        victim = max(server.worker_pids(), key=socket_count)  # the worker holding the most streams
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in server.worker_pids(), 10, "the killed worker to be gone")
        wait_for(lambda: sum(s._thread.is_alive() for s in subscribers) < 8, 10, "its streams to break")
        # the victim's streams break one by one: count them once no more have broken for half a second
        (alive,) = wait_for(lambda: settled_count(subscribers), 10, "its streams to have all broken")
        steady(server, "sse_notify_streams_open", alive)
    finally:
        for sub in subscribers:
            sub.close()


def test_metrics_count_store_errors_and_healthz_fails(
    make_server: t.Callable[..., Server], own_redis: RedisServer
) -> None:
    """With the store down, publishes answer 503, /healthz 503, and both count as store errors."""
    server = make_server(store=own_redis.url)
    own_redis.stop()
    assert server.post("/users/alice/notices", {"n": 1}).status_code == 503
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 503
    assert metric(server, "sse_notify_store_errors_total", operation="publish") == 1
    assert metric(server, "sse_notify_store_errors_total", operation="ping") == 1


def test_presence_counts_streams_on_every_worker(make_server: t.Callable[..., Server]) -> None:
    """Presence is the user's open streams over 2 workers, whichever worker answers, and falls with closes."""
    server = make_server(workers=2, **FAST_PRESENCE)
    assert presence_of(server, "alice").json() == {"user_id": "alice", "online": False, "streams": 0}
    subscribers = [Subscriber(server.stream_url("alice")) for _ in range(3)]
    try:
        for sub in subscribers:
            assert sub.opened.wait(10)
        wait_for(lambda: streams_of(server, "alice") == 3, 10, "presence to count 3 streams")
        assert [streams_of(server, "alice") for _ in range(5)] == [3] * 5
        assert streams_of(server, "bob") == 0
        subscribers.pop().close()
        wait_for(lambda: streams_of(server, "alice") == 2, 10, "presence to count 2 streams")
    finally:
        for sub in subscribers:
            sub.close()
    wait_for(lambda: streams_of(server, "alice") == 0, 10, "presence to drop to 0")


def test_presence_is_for_the_user_or_a_publisher(live_server: Server) -> None:
    """The user's own token or a publish key may read presence; another user's token is 403, none 401."""
    bearer = {"Authorization": f"Bearer {token_for('alice')}"}
    assert presence_of(live_server, "alice", headers=bearer).status_code == 200
    other = presence_of(live_server, "alice", headers={"Authorization": f"Bearer {token_for('bob')}"})
    assert other.status_code == 403
    assert presence_of(live_server, "alice", headers={}).status_code == 401
    bad = presence_of(live_server, "not a user")
    assert bad.status_code in (400, 404)
    assert "error" in bad.json()


def test_presence_across_hosts_and_a_killed_worker(
    make_server: t.Callable[..., Server], redis_server: RedisServer
) -> None:
    """A stream on host A shows on host B (one Redis); a killed worker's streams drop out in its lifetime."""
    store = f"{redis_server.url}?prefix=presence-{os.getpid()}:"
    host_a = make_server(store=store, **FAST_PRESENCE)
    host_b = make_server(store=store, **FAST_PRESENCE)
    sub = Subscriber(host_a.stream_url("alice"))
    try:
        assert sub.opened.wait(10)
        wait_for(lambda: streams_of(host_b, "alice") == 1, 10, "host B to see alice's stream on host A")
        (worker,) = host_a.worker_pids()
        os.kill(worker, signal.SIGKILL)  # no goodbye: its record must expire by itself
        wait_for(lambda: streams_of(host_b, "alice") == 0, 15, "the killed worker's stream to drop out")
    finally:
        sub.close()


def test_presence_forgets_a_stopped_host_at_once(
    make_server: t.Callable[..., Server], redis_server: RedisServer
) -> None:
    """A host stopped with SIGTERM removes its workers' counts as it goes, not a lifetime later."""
    store = f"{redis_server.url}?prefix=presence-stop-{os.getpid()}:"
    host_a = make_server(store=store, SSE_NOTIFY_PRESENCE_INTERVAL="5")  # a lifetime of 50 s
    host_b = make_server(store=store)
    sub = Subscriber(host_a.stream_url("alice"))
    try:
        assert sub.opened.wait(10)
        assert streams_of(host_a, "alice") == 1  # the answering worker writes its own first
        assert streams_of(host_b, "alice") == 1
        host_a.stop()
        assert streams_of(host_b, "alice") == 0
    finally:
        sub.close()


def test_json_logs_tell_streams_publishes_evictions_and_store_faults(
    make_server: t.Callable[..., Server], own_redis: RedisServer
) -> None:
    """LOG_FORMAT=json at INFO writes one JSON object per event, with no token and no notice data."""
    server = make_server(store=own_redis.url, SSE_NOTIFY_LOG_FORMAT="json", SSE_NOTIFY_LOG_LEVEL="INFO")
    token = token_for("alice")
    sub = Subscriber(f"{server.url}/connection/alice?token={token}")
    try:
        assert sub.opened.wait(10)
        server.publish("alice", {"secret": "payload-xyz-123"})
        assert sub.next()
        assert server.post("/users/alice/kick", {}).status_code == 202
        assert sub.next("close")
    finally:
        sub.close()
    own_redis.stop()
    assert server.post("/users/alice/notices", {"n": 2}).status_code == 503

    def records() -> list[dict[str, t.Any]]:
        return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]

    wait_for(lambda: any(r.get("event") == "store_error" for r in records()), 10, "the store error record")
    by_event = {r["event"]: r for r in records() if "event" in r}
    assert {"stream_open", "publish", "eviction", "stream_close", "store_error"} <= set(by_event)
    for record in records():
        assert {"time", "level", "logger", "pid", "message"} <= set(record)
    assert by_event["stream_open"]["user_id"] == "alice"
    assert by_event["publish"]["count"] == 1
    assert by_event["eviction"]["reason"] == "kicked"
    assert by_event["stream_close"]["reason"] == "kicked"
    assert by_event["store_error"]["operation"] == "publish"
    text = server.log()
    assert token not in text
    assert "payload-xyz-123" not in text


def test_metrics_can_be_turned_off(app: Flask, tmp_path: Path) -> None:
    """/metrics is Prometheus text; with SSE_NOTIFY_METRICS=false it is a JSON 404."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert b"sse_notify_streams_open" in response.data
    off_app = create_app({**app.config, "SSE_NOTIFY_METRICS": False})
    off = off_app.test_client().get("/metrics")
    assert off.status_code == 404
    assert off.get_json()["error"] == "not_found"


def test_presence_function_in_process(app: Flask) -> None:
    """sse_notify.presence() counts the streams of this process's hub at once."""
    with app.app_context():
        node = get_state().node
        hub = node.hub
        node.ensure_started()  # as a stream's generator does
        assert presence("alice").online is False
        conns = [hub.connect("alice"), hub.connect("alice")]
        assert presence("alice").streams == 2
        hub.disconnect(conns[0])
        assert presence("alice").streams == 1
        hub.disconnect(conns[1])
        assert presence("alice").online is False


def test_metrics_start_at_zero_for_every_known_label(app: Flask) -> None:
    """Counters with labels list every known value at 0 before it happens, so rate() sees the first one."""
    samples = {}
    for family in text_string_to_metric_families(app.test_client().get("/metrics").get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    for operation in ("publish", "replay", "presence", "ping"):
        assert ("sse_notify_store_errors_total", (("operation", operation),)) in samples
    for reason in ("slow_consumer", "overloaded", "replaced"):
        assert ("sse_notify_evictions_total", (("reason", reason),)) in samples
    assert ("sse_notify_streams_closed_total", (("reason", "disconnected"),)) in samples
    assert ("sse_notify_notices_published_total", (("kind", "broadcast"),)) in samples
    for channel in ("email", "push", "webhook"):
        for what in ("sent", "retried", "failed"):
            assert (f"sse_notify_fallback_{what}_total", (("channel", channel),)) in samples
