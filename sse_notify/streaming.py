"""One subscriber's stream: the generator a WSGI server iterates.

It takes everything it needs as arguments (no Flask globals: the request
context is gone by the time the server iterates it, see Flask's
``stream_with_context`` warning), registers with the hub *before* reading the
replay, then sends replay and live notices, dropping any notice the replay
already sent, so a resuming client gets each notice exactly once, in order.

WSGI gives no disconnect callback: a closed client is noticed when a write
fails (the next notice or heartbeat), the server closes this generator and
the ``finally`` releases everything.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .errors import BrokerError
from .events import comment, encode_event
from .handoff import SocketHandoff
from .hub import Hub, encode_notice
from .notices import dumps

__all__ = ["event_stream"]

log = logging.getLogger("sse_notify.streaming")

#: Replayed notices are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024


def event_stream(
    hub: Hub,
    user_id: str,
    last_event_id: str | None,
    *,
    expires_at: float | None = None,
    handoff: SocketHandoff | None = None,
) -> t.Iterator[bytes]:
    """Yield the bytes of ``user_id``'s stream until the client or the server ends it.

    :param expires_at: Unix time at which the stream's token expires; the
        stream is closed then (with a ``close`` event), and the client must
        come back with a new token.
    :param handoff: hands the response's socket over to the hub once the
        stream is live (see ``handoff.py``); without one, everything is yielded.
    """
    try:
        conn = hub.connect(user_id, expires_at)
    except BrokerError as exc:
        # This process could not join the store's feed (the store is down):
        # tell the client to come back later. A 200 with a retry, not a 5xx,
        # which would make EventSource give up.
        log.warning("stream of %s refused for now: %s", user_id, exc)
        yield hub.closing_frame("store unavailable")
        return
    try:
        if conn.closed:
            # Stopping, or full: send the client elsewhere or later, without
            # the "connected" preamble. The status is 200 on purpose: any other
            # makes EventSource give up for good.
            yield hub.closing_frame(conn.close_reason)
            return
        if last_event_id is None:
            # A fresh client starts from the store's head. Its first frame
            # carries that id (an id without data sets the browser's
            # lastEventId, dispatching nothing), so even a client that has
            # received no notice yet resumes from here after a reconnect.
            try:
                # Every notice after the hub's cursor reaches this stream live: start
                # there (no query), or at the store's head before the feed brought any.
                conn.cursor = hub.cursor if hub.cursor is not None else hub.broker.head()
            except BrokerError as exc:
                # Without a starting cursor the client could not resume: send it
                # back later (a 200 with a retry: EventSource tries again).
                log.warning("stream of %s refused for now: %s", user_id, exc)
                yield hub.closing_frame("store unavailable")
                return
            yield comment("connected") + encode_event(id=conn.cursor, retry=hub.retry)
        else:
            # First bytes at once: headers go out, EventSource fires "open",
            # proxies stop waiting.
            yield comment("connected") + encode_event(retry=hub.retry)
            try:
                replay = hub.broker.replay(user_id, last_event_id)
            except BrokerError as exc:
                log.warning("closing a stream of %s: replay failed: %s", user_id, exc)
                yield hub.closing_frame("store unavailable")
                return
            conn.cursor = replay.cursor
            if replay.reset is not None:
                info = {"reason": replay.reset, "last_event_id": last_event_id, "id": replay.cursor}
                yield encode_event(dumps(info), event="reset", id=replay.cursor)
            chunk: list[bytes] = []
            size = 0
            for notice in replay.notices:
                if notice.id <= conn.cursor:
                    continue
                frame = encode_notice(notice)
                chunk.append(frame)
                size += len(frame)
                conn.cursor = notice.id
                if size >= REPLAY_CHUNK:
                    conn.writing_since = time.monotonic()
                    yield b"".join(chunk)
                    conn.writing_since = 0.0
                    chunk, size = [], 0
            if chunk:
                yield b"".join(chunk)
        if handoff is not None and handoff.ready():
            # Send what queued meanwhile, then give the socket to the hub and
            # end this request: from here on no greenlet waits for the stream.
            while data := conn.take(0):
                conn.writing_since = time.monotonic()
                yield data
                conn.writing_since = 0.0
            if not conn.closed:
                conn.detach(handoff.detach(), handoff.chunked, hub)
                return
        while True:
            data = conn.take()
            if data is None:
                if conn.close_reason != "disconnected":
                    conn.writing_since = time.monotonic()
                    yield hub.closing_frame(conn.close_reason)
                return
            if not data:
                continue
            conn.writing_since = time.monotonic()
            yield data
            conn.writing_since = 0.0
    finally:
        if not conn.detached:
            hub.disconnect(conn)
