"""Live streams handed from gunicorn to the hub (``handoff.py``), against the greenlet-per-stream way.

Real ``gunicorn -k gevent``; the bytes on the wire are read off raw sockets and
decoded with h11 and httpx-sse, so both ways must produce the same valid HTTP.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import socket
import time
import types
import typing as t

import httpx
import pytest

from sse_notify.handoff import DETAILS, SocketHandoff

from .sse_client import decode_http
from .support import AUTH, Server, wait_for

pytestmark = pytest.mark.server

INSTRUMENTED = "tests.instrumented:app"


def objects(server: Server) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], httpx.get(server.url + "/_debug/objects", timeout=10).json())


def open_raw(
    server: Server, user: str, version: str = "1.1", last_event_id: str | None = None, rcvbuf: int = 0
) -> socket.socket:
    """A stream opened on a raw socket (its request sent)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    path = server.stream_url(user).removeprefix(server.url)
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    sock.sendall(f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, received: bytes = b"", timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while marker not in received:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}; got {received[-300:]!r}"
        received += chunk
    return received


def read_to_eof(sock: socket.socket, received: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize("detach", ["true", "false"])
def test_same_valid_http_either_way(make_server: t.Callable[..., Server], detach: str) -> None:
    """Notices, heartbeats and a kick's closing frame are valid chunked HTTP/1.1 ending in the last chunk."""
    server = make_server(SSE_NOTIFY_DETACH_STREAMS=detach)
    sock = open_raw(server, "alice")
    received = read_until(sock, b"retry:")
    sent = [server.publish("alice", {"n": i, "text": "x" * (i * 300)})["id"] for i in range(5)]
    received = read_until(sock, f"id: {sent[-1]}\n".encode(), received)
    received = read_until(sock, b"\r\n3\r\n:\n\n\r\n", received)  # a heartbeat (1 s here), as its own chunk
    assert httpx.post(server.url + "/users/alice/kick", headers=AUTH).status_code == 202
    received = read_to_eof(sock, received)
    sock.close()
    assert received.endswith(b"\r\n0\r\n\r\n"), received[-80:]
    events = decode_http(received)
    notices = [e for e in events if e.event == "notice"]
    assert [int(e.id) for e in notices] == sent
    assert [e.event for e in events if e.data and e.event != "notice"] == ["snapshot", "close"]


def head_lines(server: Server, version: str) -> list[bytes]:
    """The head of a new stream's response, its Date checked and taken out."""
    sock = open_raw(server, "carol", version=version)
    head = read_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")[0]
    sock.close()
    lines = head.split(b"\r\n")
    dates = [line for line in lines if line.lower().startswith(b"date: ")]
    assert len(dates) == 1
    sent = email.utils.parsedate_to_datetime(dates[0][6:].decode())
    assert abs(sent.timestamp() - time.time()) < 5
    return [line for line in lines if line not in dates]


def test_a_handed_over_streams_head_is_gunicorns_own(make_server: t.Callable[..., Server]) -> None:
    """The head sent for a handed-over stream has the lines gunicorn itself sends, a fresh Date included."""
    handed, kept = make_server(), make_server(SSE_NOTIFY_DETACH_STREAMS="false")
    for version in ("1.1", "1.0", "1.1"):  # the second 1.1 head comes from the cache of the first
        assert head_lines(handed, version) == head_lines(kept, version)


def test_http_1_0_stream_is_unframed_and_ends_by_closing(make_server: t.Callable[..., Server]) -> None:
    """An HTTP/1.0 client gets the event stream without chunk framing, ended by closing the connection."""
    server = make_server()
    sock = open_raw(server, "bob", version="1.0")
    received = read_until(sock, b"retry:")
    head, _, _ = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    sent = server.publish("bob", {"n": 1})["id"]
    received = read_until(sock, f"id: {sent}\nevent: notice\ndata: ".encode(), received)
    assert httpx.post(server.url + "/users/bob/kick", headers=AUTH).status_code == 202
    body = read_to_eof(sock, received).partition(b"\r\n\r\n")[2]
    sock.close()
    assert b'event: close\ndata: {"reason":"kicked"}\n\n' in body
    assert b"\r\n" not in body  # no chunk sizes anywhere


def test_live_streams_hold_no_greenlet(make_server: t.Callable[..., Server]) -> None:
    """With handoff, open streams cost no greenlet and no request objects; without it, one greenlet each."""
    counts = {}
    for detach in ("true", "false"):
        server = make_server(app=INSTRUMENTED, SSE_NOTIFY_DETACH_STREAMS=detach)
        baseline = objects(server)["greenlets"]
        socks = [open_raw(server, f"user{i}") for i in range(40)]
        for sock in socks:
            read_until(sock, b"retry:")
        wait_for(lambda s=server: objects(s)["hub_connections"] == 40, 10, "40 streams in the hub")
        counts[detach] = objects(server)["greenlets"] - baseline
        for sock in socks:
            sock.close()
        server.stop()
    # the node's own: the feed, heartbeats, housekeeping, presence, and a metrics flush
    assert counts["true"] <= 5, counts
    assert counts["false"] >= 40, counts


def test_client_gone_is_noticed_without_a_heartbeat(make_server: t.Callable[..., Server]) -> None:
    """A detached stream whose client closes is released at once, not at the next heartbeat."""
    server = make_server(app=INSTRUMENTED, SSE_NOTIFY_HEARTBEAT="600")
    socks = [open_raw(server, "carol") for _ in range(5)]
    for sock in socks:
        read_until(sock, b"retry:")
    wait_for(lambda: objects(server)["hub_connections"] == 5, 10, "5 streams in the hub")
    for sock in socks:
        sock.close()
    released = lambda: (o := objects(server))["hub_connections"] == 0 and o["connections"] == 0  # noqa: E731
    wait_for(released, 3, "the streams to be released")


def test_backlog_of_a_slow_reader_arrives_whole_and_in_order(make_server: t.Callable[..., Server]) -> None:
    """What the socket does not take at once follows, and everything after it, whole and in order."""
    server = make_server(app=INSTRUMENTED, SSE_NOTIFY_MAX_PENDING=str(64 << 20))
    sock = open_raw(server, "dave", rcvbuf=4096)
    received = read_until(sock, b"retry:")
    sent: list[int] = []
    backlog = 0
    for batch in range(400):  # until the kernel's buffers are full and the hub holds the rest
        body = [{"user_id": "dave", "data": {"n": batch * 5 + i, "pad": "y" * 8000}} for i in range(5)]
        sent += [n["id"] for n in server.post("/notices", body).json()]
        backlog = objects(server)["pending_bytes"]
        if backlog > 1 << 20:
            break
    assert backlog > 1 << 20, "the socket never filled up"
    received = read_until(sock, f"id: {sent[-1]}\n".encode(), received, timeout=60)
    last = received.rindex(f"id: {sent[-1]}\n".encode())
    received = received[:last] + read_until(sock, b"\n\n", received[last:])  # that event's end
    sock.close()
    got = [int(e.id) for e in decode_http(received) if e.event == "notice"]
    assert got == sent
    assert objects(server)["evicted"] == 0


# -- gunicorn, fenced -----------------------------------------------------------------


def test_the_gunicorn_under_test_is_the_one_asked_for(make_server: t.Callable[..., Server]) -> None:
    """The servers run the gunicorn of SSE_NOTIFY_TEST_GUNICORN_VERSION (make test: lowest, then highest)."""
    from importlib.metadata import version

    expected = os.environ.get("SSE_NOTIFY_TEST_GUNICORN_VERSION") or version("gunicorn")
    server = make_server()
    assert f"Starting gunicorn {expected}" in server.log()
    low, high = supported_gunicorn()
    assert low <= tuple(int(p) for p in expected.split(".")[:2]) < high


def supported_gunicorn() -> tuple[tuple[int, int], tuple[int, int]]:
    """The range pyproject.toml declares for gunicorn: (lowest major.minor, first major not supported)."""
    from importlib.metadata import requires

    (spec,) = [r for r in requires("sse-notify") or () if r.startswith("gunicorn")]
    found = dict(re.findall(r"(>=|<)\s*([0-9.]+)", spec))
    assert set(found) == {">=", "<"}, f"gunicorn needs a lower and an upper bound: {spec}"
    low = tuple(int(p) for p in found[">="].split(".")[:2])
    return (low[0], low[1]), (int(found["<"].split(".")[0]), 0)


@pytest.mark.parametrize("missing", DETAILS)
def test_a_missing_gunicorn_detail_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    """A gunicorn Response without a detail the handoff relies on: no handoff, one warning, no crash."""
    from gunicorn.http.wsgi import Response

    from sse_notify import handoff

    monkeypatch.setattr(handoff, "gevent_active", lambda: True)
    monkeypatch.setattr(handoff, "_warned", False)
    left, right = socket.socketpair()
    left.setblocking(False)
    cfg = types.SimpleNamespace(protocol="http", is_ssl=False)
    response = Response(types.SimpleNamespace(version=(1, 1), method="GET"), left, cfg)
    try:
        environ = {"REQUEST_METHOD": "GET"}
        assert SocketHandoff.for_response(response.start_response, environ) is not None  # all there
        if missing in vars(response):
            delattr(response, missing)
        else:  # a method
            monkeypatch.delattr(Response, missing)
        monkeypatch.setattr(handoff, "_details_found", None)  # as in a process of that gunicorn
        with caplog.at_level(logging.WARNING, logger="sse_notify.handoff"):
            assert SocketHandoff.for_response(response.start_response, environ) is None
            assert SocketHandoff.for_response(response.start_response, environ) is None
        (record,) = caplog.records  # once per process
        assert missing in record.getMessage()
        assert "WSGI iterator" in record.getMessage()
    finally:
        left.close()
        right.close()
