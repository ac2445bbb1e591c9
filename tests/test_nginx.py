"""Through a real nginx configured by the sample in docs/PRODUCTION.md, in front of real gunicorn.

The config is the doc's first nginx block, read at test time and changed only where a host is
named (upstream server, listen port without TLS, log paths): see :mod:`bench.proxy`, which the
proxy benchmark runs too. Speed is measured there (``python -m bench proxy``), not here.
"""

from __future__ import annotations

import json
import re
import typing as t
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bench.proxy import DocNginx, doc_nginx_block, nginx_binary
from sse_notify.config import DEFAULTS

from .sse_client import Subscriber, subscribe
from .support import AUTH, Server, delivered, require_binary, wait_for

pytestmark = pytest.mark.server

#: Long enough that no heartbeat could push a held-back notice out within a test.
HEARTBEAT = "60"

#: The control's changes to the doc's /connection/ location. Buffering alone holds nothing
#: back (nginx passes on each chunk it reads); with gzip as well, nothing is sent before a
#: buffer fills: the failure the doc's "proxy_buffering off" and "gzip off" guard against.
HOLD_BACK = {
    "proxy_buffering off;": "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;",
    "gzip off;": "gzip on;",
}


@pytest.fixture(name="nginx", scope="module")
def _nginx() -> str:
    return require_binary(
        nginx_binary() or "nginx", "these tests run docs/PRODUCTION.md's nginx config in front of gunicorn"
    )


@pytest.fixture(name="backend", scope="module")
def _backend(nginx: str, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """One gunicorn for the module, with a heartbeat too rare to flush anything."""
    store = tmp_path_factory.mktemp("nginx") / "notices.sqlite3"
    server = Server(str(store), env={"SSE_NOTIFY_HEARTBEAT": HEARTBEAT}).start()
    yield server
    server.stop(timeout=15)


@pytest.fixture(name="proxy", scope="module")
def _proxy(nginx: str, backend: Server) -> t.Iterator[DocNginx]:
    """nginx with the doc's config in front of ``backend``; its master is stopped by PID."""
    proxy = DocNginx(f"127.0.0.1:{backend.port}", nginx=nginx).start()
    yield proxy
    proxy.stop()


def via(proxy: DocNginx, backend: Server, url: str) -> str:
    """``url`` of ``backend``, through ``proxy``."""
    assert url.startswith(backend.url)
    return proxy.base_url + url.removeprefix(backend.url)


def stream(proxy: DocNginx, backend: Server, user: str, **kw: t.Any) -> Subscriber:
    """A stream of ``user`` opened through nginx, asking for gzip as browsers do."""
    return subscribe(via(proxy, backend, backend.stream_url(user)), headers={"Accept-Encoding": "gzip"}, **kw)


def hang_up(proxy: DocNginx, user: str, sub: Subscriber) -> None:
    """End ``user``'s streams from the server (a kick, through nginx), then close ``sub``.

    Closing the client alone would leave its reader blocked until the next byte, and with a
    60 s heartbeat nothing comes.
    """
    try:
        response = httpx.post(f"{proxy.base_url}/users/{user}/kick", headers=AUTH, timeout=10)
        assert response.status_code == 202, response.text
    finally:
        sub.close()


def open_streams(backend: Server) -> int:
    """Streams gunicorn holds (one worker: all of them)."""
    return int(backend.health()["streams"])


def test_notices_arrive_unbuffered_through_nginx(proxy: DocNginx, backend: Server) -> None:
    """Through the doc's config each notice arrives before the next is sent; text/event-stream, no gzip."""
    sub = stream(proxy, backend, "nora")
    try:
        headers = sub.response_headers
        assert headers is not None
        assert headers["server"].startswith("nginx")
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        assert "content-encoding" not in headers
        for i in range(5):
            sent = backend.publish("nora", {"n": i})
            got = sub.next(timeout=3)
            assert got.id == str(sent["id"])
            assert json.loads(got.data) == sent
    finally:
        hang_up(proxy, "nora", sub)


def test_control_buffering_and_gzip_hold_notices_back(nginx: str, backend: Server) -> None:
    """Control for the test above: with buffering and gzip on for streams, a notice is not there in 1 s."""
    wait_for(lambda: open_streams(backend) == 0, 10, "the streams of earlier tests to close")
    with DocNginx(f"127.0.0.1:{backend.port}", changes=HOLD_BACK, nginx=nginx) as held:
        url = via(held, backend, backend.stream_url("olga"))
        sub = Subscriber(url, headers={"Accept-Encoding": "gzip"})
        try:
            wait_for(lambda: open_streams(backend) == 1, 10, "the stream to reach gunicorn through nginx")
            backend.publish("olga", {"n": 1})
            sub.nothing(wait=1.0)
        finally:
            held.stop()  # closes the stream, so that the reader ends at once
            sub.close()


def test_resume_through_nginx_with_last_event_id(proxy: DocNginx, backend: Server) -> None:
    """Resuming through nginx with Last-Event-ID replays exactly the notices sent while away, in order."""
    sub = stream(proxy, backend, "petra")
    try:
        first = backend.publish("petra", {"n": 0})
        seen = sub.next(timeout=3)
        assert seen.id == str(first["id"])
    finally:
        hang_up(proxy, "petra", sub)
    missed = []
    for i in range(1, 4):
        sent = httpx.post(f"{proxy.base_url}/users/petra/notices", json={"n": i}, headers=AUTH, timeout=10)
        missed.append(delivered(sent))
    back = stream(proxy, backend, "petra", last_event_id=seen.id)
    try:
        got = back.notices(3, timeout=3)
        assert [e.id for e in got] == [str(n["id"]) for n in missed]
        assert [json.loads(e.data) for e in got] == missed
        back.nothing(wait=0.5)
    finally:
        hang_up(proxy, "petra", back)


def test_api_through_nginx_and_no_token_in_access_log(proxy: DocNginx, backend: Server) -> None:
    """Through nginx: 201 with the key, JSON 401 without, a 1.5 MB batch fits; no token in the stream log."""
    notices = f"{proxy.base_url}/users/quinn/notices"
    sub = stream(proxy, backend, "quinn")
    token = parse_qs(urlsplit(sub.url).query)["token"][0]
    try:
        response = httpx.post(notices, json={"n": 1}, headers=AUTH, timeout=10)
        assert response.status_code == 201, response.text
        assert response.json()["user_id"] == "quinn"
        assert sub.next(timeout=3).id == str(response.json()["id"])

        refused = httpx.post(notices, json={"n": 2}, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/json"
        assert set(refused.json()) == {"error", "detail"}
        sub.nothing(wait=0.2)

        # Above nginx's default client_max_body_size (1m), below the doc's 4m.
        batch = [{"user_id": "quinn-batch", "data": {"pad": "x" * 8000}} for _ in range(190)]
        assert len(json.dumps(batch)) > 1.4e6
        response = httpx.post(f"{proxy.base_url}/notices", json=batch, headers=AUTH, timeout=30)
        assert response.status_code == 201, response.text[:300]
        assert len(response.json()) == len(batch)
    finally:
        hang_up(proxy, "quinn", sub)
    # nginx logs a request when it ends: here when the stream closes.
    wait_for(lambda: "/connection/quinn " in proxy.access_log(), 10, "the stream's access log line")
    log = proxy.access_log()
    assert re.search(r'"GET /connection/quinn HTTP/1\.1" 200 \d+ ', log), log
    assert "token=" not in log
    assert token not in log


def nginx_seconds(value: str) -> float:
    """An nginx time (``90``, ``60s``, ``1h``, ``1m30s``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 1}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|)", value)
    assert parts, f"not an nginx time: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not an nginx time: {value!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_doc_stream_read_timeout_exceeds_heartbeat() -> None:
    """The doc's proxy_read_timeout for streams is at least twice the default SSE_NOTIFY_HEARTBEAT."""
    location = doc_nginx_block().split("location /connection/", 1)[1].split("}", 1)[0]
    match = re.search(r"^\s*proxy_read_timeout\s+(\S+);", location, re.MULTILINE)
    assert match, "the doc's /connection/ location sets no proxy_read_timeout (nginx's default is 60s)"
    assert nginx_seconds(match.group(1)) >= 2 * DEFAULTS["SSE_NOTIFY_HEARTBEAT"]
