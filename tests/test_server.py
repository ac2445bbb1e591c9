"""End to end: real ``gunicorn -k gevent`` processes, read with a real SSE client (httpx-sse)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import typing as t

import httpx
import pytest

from .sse_client import Subscriber, decode_http, subscribe
from .support import Server, token_for, wait_for

pytestmark = pytest.mark.server

INSTRUMENTED = "tests.instrumented:app"


def payload(event: t.Any) -> dict[str, t.Any]:
    """The JSON of a notice event."""
    return t.cast(dict[str, t.Any], json.loads(event.data))


def test_stream_headers_and_first_bytes(live_server: Server) -> None:
    """The stream answers 200 text/event-stream, no-cache, X-Accel-Buffering: no, no hop-by-hop, no gzip."""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as sock:
        path = live_server.stream_url("alice").removeprefix(live_server.url)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        received = b""
        while b"retry:" not in received:
            chunk = sock.recv(4096)
            assert chunk, "server closed before the first event"
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    # The first chunk is a comment, then the reconnection time: sent before any notice exists.
    assert b": connected\n" in body
    retry = re.search(rb"retry: (\d+)\n", body)
    assert retry is not None, body
    assert 100 <= int(retry[1]) <= 300, "the first retry is not 0.5-1.5x SSE_NOTIFY_RETRY"


def test_delivery_to_every_tab_and_not_to_others(live_server: Server) -> None:
    """A notice reaches each open stream of its user, with id, event name and JSON data; nobody else."""
    tabs = [subscribe(live_server.stream_url("alice")) for _ in range(3)]
    bob = subscribe(live_server.stream_url("bob"))
    sent = live_server.publish("alice", {"title": "hello", "n": 1})
    assert set(sent) == {"id", "user_id", "created_at", "data"}
    assert sent["user_id"] == "alice"
    assert sent["data"] == {"title": "hello", "n": 1}
    assert sent["created_at"].endswith("Z")
    for tab in tabs:
        got = tab.next()
        assert got.event == "notice"
        assert got.id == str(sent["id"])
        assert payload(got) == sent
    bob.nothing()
    for sub in [*tabs, bob]:
        sub.close()


def test_broadcast_and_batch(live_server: Server) -> None:
    """A broadcast reaches everyone; a batch reaches each named user, in order."""
    alice, bob = subscribe(live_server.stream_url("alice")), subscribe(live_server.stream_url("bob"))
    sent = live_server.broadcast({"title": "maintenance"})
    assert sent["user_id"] is None
    assert payload(alice.next()) == sent
    assert payload(bob.next()) == sent
    response = live_server.post(
        "/notices",
        [
            {"user_id": "alice", "data": {"n": 1}},
            {"user_id": "bob", "data": {"n": 2}},
            {"user_id": "alice", "data": {"n": 3}},
        ],
    )
    assert response.status_code == 201
    stored = response.json()
    assert [n["id"] for n in stored] == sorted(n["id"] for n in stored)
    assert [payload(e)["data"]["n"] for e in alice.notices(2)] == [1, 3]
    assert payload(bob.next())["data"] == {"n": 2}
    alice.close()
    bob.close()


def test_heartbeat_comment(live_server: Server) -> None:
    """An idle stream gets a ':' comment every heartbeat (1 s here) and no event."""
    with httpx.Client(timeout=5) as client, client.stream("GET", live_server.stream_url("carol")) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        assert first.startswith(b": connected")
        started = time.monotonic()
        beat = next(chunks)
        assert beat == b":\n\n"
        assert time.monotonic() - started < 3


def test_resume_with_last_event_id_exactly_once(live_server: Server) -> None:
    """Reconnecting with Last-Event-ID (header or ?last_event_id=) replays what was missed, once, in order."""
    first = live_server.publish("dave", {"n": 0})
    missed = [live_server.publish("dave", {"n": i}) for i in range(1, 4)]
    everyone = live_server.broadcast({"n": 4})
    live_server.publish("erin", {"n": "not for dave"})
    expected = [n["id"] for n in missed] + [everyone["id"]]

    by_header = subscribe(live_server.stream_url("dave"), last_event_id=str(first["id"]))
    assert [int(e.id) for e in by_header.notices(4)] == expected
    live = live_server.publish("dave", {"n": 5})
    assert payload(by_header.next())["id"] == live["id"]
    by_header.nothing()
    by_header.close()

    by_query = Subscriber(live_server.stream_url("dave", f"last_event_id={first['id']}"))
    assert [int(e.id) for e in by_query.notices(5)] == [*expected, live["id"]]
    by_query.nothing()
    by_query.close()


def test_first_frame_id_is_a_resume_point(live_server: Server) -> None:
    """The id a fresh stream starts with resumes correctly: a notice sent after it is replayed."""
    live_server.publish("nina", {"n": 0})
    sub = subscribe(live_server.stream_url("nina"))
    wait_for(lambda: sub.last_event_id, 5, "the first frame's id")
    start = sub.last_event_id
    sub.close()
    sent = live_server.publish("nina", {"n": 1})
    resumed = subscribe(live_server.stream_url("nina"), last_event_id=start)
    assert [int(e.id) for e in resumed.notices(1)] == [sent["id"]]
    resumed.nothing(0.3)
    resumed.close()


def test_reset_on_unknown_and_expired_cursor(make_server: t.Callable[..., Server]) -> None:
    """An unknown or too-old cursor gets a named reset event, then what is still kept, then live notices."""
    server = make_server(SSE_NOTIFY_RETENTION_COUNT="3")
    sub = subscribe(server.stream_url("frank"), last_event_id="999999")
    reset = sub.next("reset")
    assert json.loads(reset.data)["reason"] == "unknown"
    live = server.publish("frank", {"n": "live"})
    assert payload(sub.next())["id"] == live["id"]
    sub.close()

    kept = [server.publish("frank", {"n": i}) for i in range(6)][-3:]
    old = subscribe(server.stream_url("frank"), last_event_id=str(live["id"]))
    info = json.loads(old.next("reset").data)
    assert info["reason"] == "expired"
    assert info["last_event_id"] == str(live["id"])
    assert [payload(e)["id"] for e in old.notices(3)] == [n["id"] for n in kept]
    old.nothing()
    old.close()


def test_notices_survive_restart(live_server: Server) -> None:
    """Notices stored before a restart are replayed after it, and ids keep growing."""
    before = [live_server.publish("gina", {"n": i}) for i in range(3)]
    live_server.restart()
    after = live_server.publish("gina", {"n": 3})
    assert after["id"] > before[-1]["id"]
    sub = subscribe(live_server.stream_url("gina"), last_event_id="0")
    assert [payload(e)["id"] for e in sub.notices(4)] == [n["id"] for n in [*before, after]]
    sub.close()


def _streams_on_every_worker(server: Server, user: str, workers: int) -> list[Subscriber]:
    """Open streams until each worker holds at least one (the kernel picks the worker).

    The server must allow 60 streams per user and worker (``SSE_NOTIFY_MAX_STREAMS_PER_USER``):
    the kernel may hand more than the default 20 to one worker before every worker has one.
    """
    subs: list[Subscriber] = []
    pids: set[str] = set()
    for _ in range(60):
        sub = subscribe(server.stream_url(user))
        subs.append(sub)
        assert sub.response_headers is not None
        pids.add(sub.response_headers["X-Worker-Pid"])
        if len(pids) == workers:
            return subs
    raise AssertionError(f"60 streams landed on only {len(pids)} of {workers} workers")


def test_cross_worker_delivery(make_server: t.Callable[..., Server]) -> None:
    """With -w 4, a notice published through any worker reaches the user's streams on every worker.

    The safety poll is set to 60 s, so only the cross-process wake-up can deliver within the wait.
    """
    server = make_server(
        workers=4, app=INSTRUMENTED, SSE_NOTIFY_POLL_INTERVAL="60", SSE_NOTIFY_MAX_STREAMS_PER_USER="60"
    )
    subs = _streams_on_every_worker(server, "hank", 4)
    sent = [server.publish("hank", {"n": i}) for i in range(20)]
    for sub in subs:
        assert [int(e.id) for e in sub.notices(20, timeout=5)] == [n["id"] for n in sent]
    for sub in subs:
        sub.close()


def test_shutdown_ends_streams_promptly(make_server: t.Callable[..., Server]) -> None:
    """SIGTERM with open streams: gunicorn exits in seconds, well inside its 10 s graceful timeout."""
    server = make_server(workers=2)
    subs = [subscribe(server.stream_url(f"u{i}")) for i in range(20)]
    took = server.stop(signal.SIGTERM)
    assert took < 6, f"shutdown took {took:.1f}s"
    for sub in subs:
        sub.close()


def test_reload_resumes_with_nothing_lost(make_server: t.Callable[..., Server]) -> None:
    """SIGHUP: old workers close their streams and exit fast; clients reconnect and get every notice once."""
    server = make_server(workers=2)
    old_workers = set(server.worker_pids())
    subs = [subscribe(server.stream_url("ivan"), reconnect=True) for _ in range(6)]
    sent = [server.publish("ivan", {"n": i}) for i in range(5)]
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGHUP)
    sent += [server.publish("ivan", {"n": i}) for i in range(5, 10)]
    wait_for(lambda: not old_workers & set(server.worker_pids()), 8, "the old workers to exit")
    assert time.monotonic() - started < 8
    sent += [server.publish("ivan", {"n": i}) for i in range(10, 15)]
    for sub in subs:
        assert [int(e.id) for e in sub.notices(15)] == [n["id"] for n in sent]
        sub.nothing(0.3)
        assert sub.connections >= 2, "the stream should have been closed by the reload"
        sub.close()


def test_killed_worker_clients_resume_elsewhere(make_server: t.Callable[..., Server]) -> None:
    """kill -9 of a worker: its clients reconnect to the others and miss nothing."""
    server = make_server(workers=2, app=INSTRUMENTED, SSE_NOTIFY_MAX_STREAMS_PER_USER="60")
    subs = _streams_on_every_worker(server, "judy", 2)
    for sub in subs:
        sub.reconnect = True
    victim = int(subs[0].response_headers["X-Worker-Pid"])  # type: ignore[index]
    sent = [server.publish("judy", {"n": i}) for i in range(3)]
    os.kill(victim, signal.SIGKILL)
    sent += [server.publish("judy", {"n": i}) for i in range(3, 8)]
    for sub in subs:
        assert [int(e.id) for e in sub.notices(8, timeout=15)] == [n["id"] for n in sent]
        sub.nothing(0.3)
        sub.close()


def tiny_window_socket(port: int) -> socket.socket:
    """A client socket with a 4 KiB receive buffer (set before connect, so the window stays small)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def test_slow_consumer_is_closed_then_resumes(make_server: t.Callable[..., Server]) -> None:
    """A client that stops reading is closed when its buffer fills; it resumes with nothing lost."""
    server = make_server(app=INSTRUMENTED, SSE_NOTIFY_MAX_PENDING="65536")
    big = "x" * 8000
    sock = tiny_window_socket(server.port)
    sock.sendall(f"GET /connection/kate?token={token_for('kate')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    wait_for(
        lambda: httpx.get(server.url + "/_debug/objects").json()["hub_connections"] == 1, 5, "the stream"
    )
    sent: list[dict[str, t.Any]] = []
    # Rounds smaller than the 64 KiB buffer: only a writer that is really
    # stuck (kernel buffers full) lets them pile up past the limit.
    for batch in range(600):
        body = [{"user_id": "kate", "data": {"n": batch * 7 + i, "pad": big}} for i in range(7)]
        response = server.post("/notices", body)
        assert response.status_code == 201
        sent += response.json()
        if httpx.get(server.url + "/healthz").json()["evicted"]:
            print(f"evicted after {batch + 1} rounds")
            break
    stats = httpx.get(server.url + "/_debug/objects").json()
    assert stats["evicted"] == 1, f"the stream was never evicted: {stats}"
    assert stats["hub_connections"] == 0
    assert stats["pending_bytes"] == 0
    # Now read what the server had written before closing, as an EventSource would,
    # then reconnect from the last id received.
    sock.setblocking(True)
    sock.settimeout(10)
    raw = b""
    while chunk := sock.recv(1 << 20):
        raw += chunk
        if raw.endswith(b"0\r\n\r\n"):
            break
    sock.close()
    seen = [int(sse.id) for sse in decode_http(raw) if sse.event == "notice"]
    assert seen == [n["id"] for n in sent[: len(seen)]]
    resumed = subscribe(server.stream_url("kate"), last_event_id=str(seen[-1]) if seen else "0")
    rest = resumed.notices(len(sent) - len(seen), timeout=15)
    assert [int(e.id) for e in rest] == [n["id"] for n in sent[len(seen) :]]
    resumed.nothing(0.3)
    resumed.close()


def test_no_leak_after_1000_cycles(make_server: t.Callable[..., Server]) -> None:
    """1,000 connect/disconnect cycles leave no greenlet, connection, buffer or hub entry behind."""
    server = make_server(app=INSTRUMENTED)
    # The baseline is taken once the hub runs (its feed and housekeeping greenlets exist).
    subscribe(server.stream_url("warmup")).close()
    baseline = wait_for(
        lambda: (s := httpx.get(server.url + "/_debug/objects").json())["hub_connections"] == 0 and s,
        10,
        "the warm-up stream to be released",
    )
    publisher = threading.Thread(
        target=lambda: [server.publish(f"leak{i % 7}", {"n": i}) for i in range(200)], daemon=True
    )
    publisher.start()
    with httpx.Client(timeout=5) as client:
        for i in range(1000):
            with client.stream("GET", server.stream_url(f"leak{i % 7}")) as response:
                assert next(response.iter_raw()).startswith(b": connected")
    publisher.join(30)

    def settled() -> dict[str, t.Any] | None:
        stats = httpx.get(server.url + "/_debug/objects").json()
        if stats["hub_connections"] == 0 and stats["connections"] == 0:
            return stats
        return None

    # Dead clients are noticed at the next heartbeat (1 s here).
    try:
        stats = wait_for(settled, 10, "every stream to be released", interval=0.5)
    except AssertionError:
        raise AssertionError(httpx.get(server.url + "/_debug/objects").json()) from None
    assert stats["hub_users"] == 0
    assert stats["pending_bytes"] == 0
    assert stats["greenlets"] <= baseline["greenlets"], (baseline, stats)


def test_client_that_never_reads_again_is_dropped(make_server: t.Callable[..., Server]) -> None:
    """A client that stops reading for good loses its stream after the send timeout; nothing stays behind."""
    server = make_server(app=INSTRUMENTED, SSE_NOTIFY_MAX_PENDING="65536", SSE_NOTIFY_SEND_TIMEOUT="1")
    subscribe(server.stream_url("warmup")).close()
    baseline = wait_for(
        lambda: (s := httpx.get(server.url + "/_debug/objects").json())["hub_connections"] == 0 and s,
        10,
        "the warm-up stream to be released",
    )
    sock = tiny_window_socket(server.port)
    sock.sendall(f"GET /connection/liam?token={token_for('liam')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    wait_for(
        lambda: httpx.get(server.url + "/_debug/objects").json()["hub_connections"] == 1, 5, "the stream"
    )
    for batch in range(600):
        body = [{"user_id": "liam", "data": {"pad": "x" * 8000}} for _ in range(7)]
        assert server.post("/notices", body).status_code == 201
        if httpx.get(server.url + "/healthz").json()["evicted"]:
            print(f"evicted after {batch + 1} rounds")
            break
    assert httpx.get(server.url + "/_debug/objects").json()["evicted"] == 1, "never evicted"

    def released() -> dict[str, t.Any] | None:
        stats = httpx.get(server.url + "/_debug/objects").json()
        return stats if stats["connections"] == 0 and stats["greenlets"] <= baseline["greenlets"] else None

    try:
        wait_for(released, 10, "the stuck stream's greenlet to be dropped", interval=0.5)
    finally:
        sock.close()
