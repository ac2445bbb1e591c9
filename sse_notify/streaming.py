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

import time
import typing as t

from . import telemetry
from .errors import BrokerError
from .events import comment, encode_event
from .handoff import SocketHandoff
from .hub import Hub, encode_notice
from .inbox import snapshot as inbox_snapshot
from .notices import dumps

__all__ = ["event_stream"]

#: Replayed notices are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024


def event_stream(
    hub: Hub,
    user_id: str,
    last_event_id: str | None,
    *,
    expires_at: float | None = None,
    handoff: SocketHandoff | None = None,
    snapshot: int = 0,
) -> t.Iterator[bytes]:
    """Yield the bytes of ``user_id``'s stream until the client or the server ends it.

    :param expires_at: Unix time at which the stream's token expires; the
        stream is closed then (with a ``close`` event), and the client must
        come back with a new token.
    :param handoff: hands the response's socket over to the hub once the
        stream is live (see ``handoff.py``); without one, everything is yielded.
    :param snapshot: when above 0, the first event is a ``snapshot`` of the
        inbox: the unread count and this many newest notices.
    """
    try:
        conn = hub.connect(user_id, expires_at, resumed=last_event_id is not None)
    except BrokerError as exc:
        # This process could not join the store's feed (the store is down):
        # tell the client to come back later. A 200 with a retry, not a 5xx,
        # which would make EventSource give up.
        telemetry.store_failed("subscribe", exc)
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
                telemetry.store_failed("head", exc)
                yield hub.closing_frame("store unavailable")
                return
            preamble = comment("connected") + encode_event(id=conn.cursor, retry=hub.retry)
        else:
            preamble = comment("connected") + encode_event(retry=hub.retry)
        if snapshot:
            # Read after the stream joined the hub: a notice published meanwhile
            # is in the snapshot, arrives live, or both (the client keeps one).
            try:
                preamble += encode_event(inbox_snapshot(hub.broker, user_id, snapshot), event="snapshot")
            except BrokerError as exc:
                telemetry.store_failed("snapshot", exc)
                yield hub.closing_frame("store unavailable")
                return
        # First bytes at once: headers go out, EventSource fires "open", proxies stop waiting.
        yield preamble
        if last_event_id is not None:
            try:
                replay = hub.broker.replay(user_id, last_event_id)
            except BrokerError as exc:
                telemetry.store_failed("replay", exc)
                yield hub.closing_frame("store unavailable")
                return
            conn.cursor = replay.cursor
            if replay.reset is not None:
                info = {"reason": replay.reset, "last_event_id": last_event_id, "id": replay.cursor}
                yield encode_event(dumps(info), event="reset", id=replay.cursor)
            chunk: list[bytes] = []
            size = sent = 0
            for notice in replay.notices:
                if notice.id <= conn.cursor:
                    continue
                sent += 1
                frame = encode_notice(notice)
                chunk.append(frame)
                size += len(frame)
                conn.cursor = notice.id
                if size >= REPLAY_CHUNK:
                    conn.writing_since = time.monotonic()
                    yield b"".join(chunk)
                    conn.writing_since = 0.0
                    chunk, size = [], 0
            if sent:
                telemetry.replayed(sent)
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
