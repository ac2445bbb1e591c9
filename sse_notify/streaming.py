"""Opening a stream: :func:`open_stream`, the one way, for the view and the fast path alike.

:func:`open_stream` checks a request (the user id, then who may read it) and returns
the status, headers and body of the answer; :func:`event_stream` is that body, the
generator a WSGI server iterates for one subscriber.

The generator takes everything it needs as arguments (no Flask globals: the request
context is gone by the time the server iterates it, see Flask's ``stream_with_context``
warning), registers with the hub *before* reading the replay, then sends replay and
live notices, dropping any notice the replay already sent, so a resuming client gets
each notice exactly once, in order. Once the stream is live it may hand its socket to
the hub (``handoff.py``) and end the request.

WSGI gives no disconnect callback: a closed client of a stream that was not handed
over is noticed when a write fails (the next notice or heartbeat), the server closes
this generator and the ``finally`` releases everything.
"""

from __future__ import annotations

import time
import typing as t

from . import telemetry
from .brokers.base import Followed, topic_keys
from .delivery import DEFAULT_PREFERENCES, Preferences
from .errors import BrokerError, InvalidTopic
from .events import comment, encode_event
from .handoff import START_RESPONSE_KEY, SocketHandoff
from .inbox import snapshot as inbox_snapshot
from .notices import checked_topic, checked_user_id, dumps
from .positions import BROADCAST_KEY, Positions
from .streams import QueuedStream, Stream, closing_frame, encode_notice, encode_notice_body

if t.TYPE_CHECKING:
    from werkzeug.wrappers import Request

    from .node import Node
    from .service import State

__all__ = ["HEADERS", "StreamResponse", "event_stream", "open_stream"]

#: Replayed notices are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024
#: The most topics one stream may follow (``?topics=``).
MAX_TOPICS = 32

#: The headers of every stream.
HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)


class StreamResponse(t.NamedTuple):
    """What a stream request is answered: ``200 OK``, :data:`HEADERS`, and the body."""

    headers: list[tuple[str, str]]
    body: t.Iterator[bytes]


def open_stream(state: State, request: Request, user_id: str, start_response: t.Any = None) -> StreamResponse:
    """Check a stream request and make its answer (what ``GET /connection/<user_id>`` does).

    :param request: the request, as werkzeug reads it: the token (``?token=``,
        ``Authorization: Bearer``, the cookie) and ``Last-Event-ID`` (header, else
        ``?last_event_id=``) come from it.
    :param start_response: the server's, when the stream may take its socket over
        (default: the one ``capture_start_response`` left in the environ).
    :raises ~sse_notify.errors.InvalidUserId: for a user id outside the rule.
    :raises ~sse_notify.errors.AuthError: 401 or 403, before any byte of the stream is sent.
    """
    checked_user_id(user_id)
    topics = stream_topics(request.args.get("topics"))
    expires_at = state.security.stream_grant(request, user_id, topics)
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is None:
        last_event_id = request.args.get("last_event_id")
    settings = state.settings
    handoff = None
    if settings.detach_streams:
        if start_response is None:
            start_response = request.environ.get(START_RESPONSE_KEY)
        handoff = SocketHandoff.for_response(start_response, request.environ)
    body = event_stream(
        state.node,
        user_id,
        last_event_id,
        expires_at=expires_at,
        handoff=handoff,
        snapshot=settings.snapshot_size if settings.snapshot else 0,
        topics=topics,
    )
    return StreamResponse(list(HEADERS), body)


def stream_topics(value: str | None) -> tuple[str, ...]:
    """The topics of ``?topics=a,b`` (each checked, once each, at most :data:`MAX_TOPICS`).

    :raises ~sse_notify.errors.InvalidTopic: for a name outside the rule, or too many.
    """
    if not value:
        return ()
    topics = tuple(dict.fromkeys(checked_topic(name, "topics: ") for name in value.split(",")))
    if len(topics) > MAX_TOPICS:
        raise InvalidTopic(f"topics: at most {MAX_TOPICS} per stream, got {len(topics)}", value)
    return topics


def _start(stream: Stream, user_id: str, topics: tuple[str, ...], followed: Followed | None) -> Positions:
    """Where a new stream starts on a store whose audiences are ordered apart: per audience, where the
    feed stands, or before the oldest of the audience's notices already waiting in the stream's queue."""
    keys = [user_id, BROADCAST_KEY, *topic_keys(topics)]
    feed = (followed.positions if followed is not None else None) or {}
    values = []
    for key in keys:
        position = feed.get(key, 0)
        oldest = stream.oldest_queued(key) if isinstance(stream, QueuedStream) else None
        values.append(position if oldest is None else min(position, oldest - 1))
    return Positions(keys, values)


def event_stream(
    node: Node,
    user_id: str,
    last_event_id: str | None,
    *,
    expires_at: float | None = None,
    handoff: SocketHandoff | None = None,
    snapshot: int = 0,
    topics: tuple[str, ...] = (),
) -> t.Iterator[bytes]:
    """Yield the bytes of ``user_id``'s stream until the client or the server ends it.

    :param expires_at: Unix time at which the stream's token expires; the
        stream is closed then (with a ``close`` event), and the client must
        come back with a new token.
    :param handoff: hands the response's socket over to the hub once the
        stream is live (see ``handoff.py``); without one, everything is yielded.
    :param snapshot: when above 0, the first event is a ``snapshot`` of the
        inbox: the unread count and this many newest notices.
    :param topics: the stream also gets these topics' notices (live and replayed).
    """
    hub, broker = node.hub, node.broker
    try:
        node.ensure_started()
    except BrokerError as exc:
        # This process could not join the store's feed (the store is down):
        # tell the client to come back later. A 200 with a retry, not a 5xx,
        # which would make EventSource give up.
        telemetry.store_failed("subscribe", exc)
        yield closing_frame("store unavailable", hub.retry)
        return
    stream = hub.connect(user_id, expires_at, resumed=last_event_id is not None, topics=topics)
    handed: Stream | None = None
    try:
        if stream.closed:
            # Stopping, or full: send the client elsewhere or later, without
            # the "connected" preamble. The status is 200 on purpose: any other
            # makes EventSource give up for good.
            yield closing_frame(stream.close_reason, hub.retry, hub.reconnect_window())
            return
        try:
            # From here on the feed brings this user's (and topics') notices (targeted Redis:
            # once it subscribed). ``followed``: where to start, if the feed only now follows.
            followed = broker.follow([user_id, *topic_keys(topics)])
        except BrokerError as exc:
            telemetry.store_failed("follow", exc)
            yield closing_frame("store unavailable", hub.retry)
            return
        positions = None
        if broker.positional and last_event_id is None:
            # Each audience is in id order on its own: start each where the feed stands (before
            # what of it already waits in the queue).
            stream.positions = positions = _start(stream, user_id, topics, followed)
            preamble = comment("connected") + encode_event(id=positions.encode(), retry=hub.first_retry())
        elif last_event_id is None and followed is not None:
            # A notice after this cursor that the feed may not bring is read below. One the
            # feed brought since the stream joined the hub waits in its queue: start before it.
            oldest = stream.oldest_queued()
            stream.cursor = followed.cursor if oldest is None else min(followed.cursor, oldest - 1)
            preamble = comment("connected") + encode_event(id=stream.cursor, retry=hub.first_retry())
        elif last_event_id is None:
            # A fresh client starts from the store's head. Its first frame
            # carries that id (an id without data sets the browser's
            # lastEventId, dispatching nothing), so even a client that has
            # received no notice yet resumes from here after a reconnect.
            try:
                # Every notice after the hub's cursor reaches this stream live: start
                # there (no query), or at the store's head before the feed brought any.
                stream.cursor = hub.cursor if hub.cursor is not None else broker.head()
            except BrokerError as exc:
                # Without a starting cursor the client could not resume: send it
                # back later (a 200 with a retry: EventSource tries again).
                telemetry.store_failed("head", exc)
                yield closing_frame("store unavailable", hub.retry)
                return
            preamble = comment("connected") + encode_event(id=stream.cursor, retry=hub.first_retry())
        else:
            preamble = comment("connected") + encode_event(retry=hub.first_retry())
        try:
            # Read after the stream joined the hub, so a change of preferences meanwhile
            # comes live and is not overwritten by this read (see Hub.preferences).
            preferences = hub.preferences.get(user_id)
            if preferences is None and hub.any_preferences is False:  # nobody has any (yet)
                preferences = DEFAULT_PREFERENCES
            elif preferences is None:
                preferences = Preferences.from_json(broker.preferences([user_id]).get(user_id))
                if preferences is not DEFAULT_PREFERENCES:
                    preferences = hub.preferences.setdefault(user_id, preferences)
            if snapshot:
                # A notice published meanwhile is in the snapshot, arrives live, or both
                # (the client keeps one).
                body = inbox_snapshot(broker, user_id, snapshot, preferences)
                preamble += encode_event(body, event="snapshot")
        except BrokerError as exc:
            telemetry.store_failed("snapshot", exc)
            yield closing_frame("store unavailable", hub.retry)
            return
        # First bytes at once: headers go out, EventSource fires "open", proxies stop waiting.
        if handoff is not None:
            handoff.send_head(preamble)  # the head and the preamble in one write
        else:
            yield preamble
        replay_from = last_event_id
        if replay_from is None and followed is not None and followed.missed:
            replay_from = str(followed.cursor)
        if replay_from is not None:
            try:
                replay = broker.replay(user_id, replay_from, topics)
            except BrokerError as exc:
                telemetry.store_failed("replay", exc)
                yield closing_frame("store unavailable", hub.retry)
                return
            stream.cursor = replay.cursor
            stream.positions = positions = replay.positions
            if replay.reset is not None and last_event_id is not None:
                info = {"reason": replay.reset, "last_event_id": last_event_id, "id": replay.cursor}
                shown = replay.cursor if positions is None else positions.encode()
                yield encode_event(dumps(info), event="reset", id=shown)
            chunk: list[bytes] = []
            size = sent = 0
            for notice in replay.notices:
                if positions is not None:
                    if not positions.advance(notice.key or BROADCAST_KEY, notice.id):
                        continue
                elif notice.id <= stream.cursor:
                    continue
                if notice.meta_json and not hub.wants(user_id, notice):
                    stream.cursor = notice.id
                    continue
                sent += 1
                if positions is None:
                    frame = encode_notice(notice)
                else:
                    frame = positions.id_line() + encode_notice_body(notice)
                chunk.append(frame)
                size += len(frame)
                stream.cursor = notice.id
                if size >= REPLAY_CHUNK:
                    stream.writing_since = time.monotonic()
                    yield b"".join(chunk)
                    stream.writing_since = 0.0
                    chunk, size = [], 0
            if sent:
                telemetry.replayed(sent)
            if chunk:
                yield b"".join(chunk)
        if handoff is not None and handoff.ready():
            # Send what queued meanwhile, then give the socket to the hub and
            # end this request: from here on no greenlet waits for the stream.
            while data := stream.take(0):
                stream.writing_since = time.monotonic()
                yield data
                stream.writing_since = 0.0
            if not stream.closed:
                handed = hub.hand_over(stream, handoff.detach(), handoff.framing)
                return
        hub.expire_at(stream, expires_at)
        while True:
            data = stream.take()
            if data is None:
                if stream.close_reason != "disconnected":
                    stream.writing_since = time.monotonic()
                    yield closing_frame(stream.close_reason, hub.retry, hub.reconnect_window())
                return
            if not data:
                continue
            stream.writing_since = time.monotonic()
            yield data
            stream.writing_since = 0.0
    finally:
        if handed is None:
            hub.disconnect(stream)
