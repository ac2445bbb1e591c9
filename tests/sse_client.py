"""The one SSE client of the tests, on httpx-sse's public API (``connect_sse``, ``EventSource``).

- :func:`decode`: the events in ``text/event-stream`` bytes (or chunks of them);
  :func:`decode_http`: the same for a raw HTTP/1.x response read off a socket (h11 reads the HTTP).
- :class:`Subscriber`: a stream of a real server read in a thread, like a browser's
  EventSource: every block, in order, with the moment it arrived; with ``reconnect=True`` it
  comes back with ``Last-Event-ID`` when the stream ends. :func:`subscribe` waits until it opened.

Nothing here parses the event stream itself.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h11
import httpx
from httpx_sse import EventSource, ServerSentEvent, connect_sse

__all__ = [
    "Event",
    "Subscriber",
    "decode",
    "decode_http",
    "named",
    "on_every_worker",
    "retry_of",
    "subscribe",
]


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: t.Iterable[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> t.Iterator[bytes]:
        yield from self.chunks


def decode(raw: bytes | t.Iterable[bytes]) -> list[ServerSentEvent]:
    """The blocks httpx-sse reads from ``raw`` (bytes, or the chunks they arrive in)."""
    chunks = [raw] if isinstance(raw, bytes) else list(raw)
    response = httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=_Chunks(chunks))
    return list(EventSource(response).iter_sse())


def decode_http(raw: bytes) -> list[ServerSentEvent]:
    """The blocks of a raw HTTP/1.x response read off a socket (h11 for the HTTP, httpx-sse for SSE)."""
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.receive_data(raw)
    body: list[bytes] = []
    while True:
        item = conn.next_event()
        if item is h11.NEED_DATA or isinstance(item, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
        if isinstance(item, h11.Data):
            body.append(bytes(item.data))
    return decode(body)


def named(blocks: t.Iterable[ServerSentEvent | Event]) -> list[t.Any]:
    """Blocks that dispatch an event (leaves out the ``id:``/``retry:``-only blocks)."""
    return [b for b in blocks if b.data or b.event != "message"]


def retry_of(blocks: t.Iterable[ServerSentEvent | Event]) -> int | None:
    """The last ``retry:`` among ``blocks``."""
    found = [b.retry for b in blocks if b.retry is not None]
    return found[-1] if found else None


@dataclass
class Event:
    """One block a :class:`Subscriber` received, with when it arrived and on which connection."""

    event: str
    id: str
    data: str
    retry: int | None
    at: float
    connection: int

    def json(self) -> t.Any:
        """The data, parsed."""
        import json

        return json.loads(self.data)


class Subscriber:
    """A stream read by httpx-sse in a background thread, as a browser's EventSource reads it.

    With ``reconnect=True``, when the stream ends or breaks it waits briefly and
    reconnects with ``Last-Event-ID`` set to the last id it saw.
    """

    def __init__(
        self,
        url: str,
        *,
        last_event_id: str | None = None,
        reconnect: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.last_event_id = last_event_id
        self.reconnect = reconnect
        self.headers = headers or {}
        self.events: queue.Queue[Event] = queue.Queue()
        #: Every block taken by :meth:`next` or :meth:`rest` so far, in order.
        self.seen: list[Event] = []
        self.connections = 0
        #: Set when a stream answered 200 (or reading stopped for good).
        self.opened = threading.Event()
        #: Set when reading stopped for good: the stream ended (or failed) and no reconnect follows.
        self.ended = threading.Event()
        self.response_headers: httpx.Headers | None = None
        self._stop = threading.Event()
        #: The stream's socket, shut down by :meth:`close` so that a blocked read returns at once.
        self._socket: socket.socket | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._read()
        finally:
            self.ended.set()
            self.opened.set()

    def _read(self) -> None:
        while not self._stop.is_set():
            headers = dict(self.headers)
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                with connect_sse(self._client, "GET", self.url, headers=headers) as source:
                    source.response.raise_for_status()
                    stream = source.response.extensions.get("network_stream")
                    self._socket = stream.get_extra_info("socket") if stream is not None else None
                    self.connections += 1
                    self.response_headers = source.response.headers
                    self.opened.set()
                    for sse in source.iter_sse():
                        if sse.id:
                            self.last_event_id = sse.id
                        at = time.monotonic()
                        self.events.put(Event(sse.event, sse.id, sse.data, sse.retry, at, self.connections))
                        if self._stop.is_set():
                            return
            except Exception:
                pass  # closed by close(), refused, or broken: reconnect if asked
            if not self.reconnect or self._stop.is_set():
                return
            self._stop.wait(0.2)

    def next(self, event: str = "notice", timeout: float = 10) -> Event:
        """The next event named ``event`` (every block read on the way is kept in :attr:`seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event!r} event within {timeout}s from {self.url}: {self.seen}")
            try:
                got = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(got)
            if got.event == event and (got.data or event != "message"):
                return got

    def notices(self, count: int, timeout: float = 10) -> list[Event]:
        """The next ``count`` notice events."""
        return [self.next("notice", timeout) for _ in range(count)]

    def nothing(self, wait: float = 0.5, event: str = "notice") -> None:
        """Assert that no ``event`` arrives within ``wait`` seconds."""
        try:
            got = self.next(event, wait)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {event} event: {got}")

    def rest(self, timeout: float = 5) -> list[Event]:
        """Wait until the server ends the stream; the blocks not taken yet."""
        assert self.ended.wait(timeout), f"the stream {self.url} did not end within {timeout}s"
        rest: list[Event] = []
        while not self.events.empty():
            rest.append(self.events.get())
        self.seen += rest
        return rest

    @property
    def pid(self) -> str:
        """The worker that serves this stream (``tests.instrumented`` only)."""
        assert self.response_headers is not None
        return self.response_headers["X-Worker-Pid"]

    def close(self) -> None:
        """Stop reading and close the connection (at once: a read waiting for data is woken)."""
        self._stop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._client.close()
        self._thread.join(5)


def subscribe(url: str, **kw: t.Any) -> Subscriber:
    """A :class:`Subscriber` whose stream has opened (a 200); fails with the URL if it did not."""
    sub = Subscriber(url, **kw)
    assert sub.opened.wait(10), f"the stream {url} did not answer"
    assert sub.response_headers is not None, f"the stream {url} did not open"
    return sub


def on_every_worker(
    open_one: t.Callable[[], Subscriber], workers: int, attempts: int = 40
) -> list[Subscriber]:
    """Streams opened by ``open_one`` until each of ``workers`` holds one (the kernel picks the worker).

    One stream per worker is kept and the others closed at once, so that the user's
    streams stay under ``SSE_NOTIFY_MAX_STREAMS_PER_USER``. The server's responses must say
    their worker in ``X-Worker-Pid`` (as ``tests.instrumented`` and the example app do).
    """
    by_worker: dict[str, Subscriber] = {}
    extra: list[Subscriber] = []

    def close_extra() -> None:
        # Together: each close waits for its reader to wake (the stream's next heartbeat).
        with ThreadPoolExecutor(max(1, len(extra))) as pool:
            list(pool.map(Subscriber.close, extra))
        extra.clear()

    for _ in range(attempts):
        sub = open_one()
        if sub.pid in by_worker:
            extra.append(sub)
            if len(extra) == 8:  # well under the streams a user may have on a worker
                close_extra()
            continue
        by_worker[sub.pid] = sub
        if len(by_worker) == workers:
            close_extra()
            return list(by_worker.values())
    close_extra()
    raise AssertionError(f"{attempts} streams landed on only {len(by_worker)} of {workers} workers")
