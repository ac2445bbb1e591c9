"""A live stream, behind one small interface, with one class per way of writing.

The hub holds :class:`Stream` objects and calls only :meth:`Stream.put`,
:meth:`Stream.heartbeat`, :meth:`Stream.close` and :meth:`Stream.abort`; it never asks
which kind a stream is (Centrifuge's ``Transport`` has the same shape).

- :class:`QueuedStream` (any WSGI server): frames queue here, bounded, and the stream's
  own greenlet (or thread) takes them and yields them to the server (``streaming.py``).
- :class:`SocketStream` (gunicorn + gevent, see ``handoff.py``): once a stream is live,
  the hub writes each frame to the handed-over socket with one non-blocking
  ``os.write`` from its fan-out loop; what the socket does not take waits in
  :attr:`SocketStream.pending` bytes, written by an event-loop watcher, and every later
  frame queues behind it, so the order on the wire is the order of :meth:`~Stream.put`.
  Another watcher notices at once when the client goes away. No greenlet waits for it.

A stream starts queued and may be handed over (``Hub.hand_over``), which replaces it in
the hub by a :class:`SocketStream` carrying the same state.

Also here: what a stream sends when the server ends it (:func:`closing_frame`), and
:class:`Expiries`, the one timer that closes streams whose token expired.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import random
import time
import typing as t

from .concurrency import Event, Handle, call_later, gevent_active, new_event, watch_fd
from .events import comment, encode_event
from .notices import Notice, dumps

if t.TYPE_CHECKING:
    from .positions import Positions

if t.TYPE_CHECKING:
    from .handoff import Framing
    from .hub import Hub

__all__ = [
    "CLOSE_REASONS",
    "HEARTBEAT",
    "Expiries",
    "QueuedStream",
    "SocketStream",
    "Stream",
    "closing_frame",
    "encode_notice",
    "spread_retry",
]

#: A comment line: keeps proxies and the client's idle timers from closing a quiet stream.
HEARTBEAT = comment()

#: Why a stream ended -> whether the client is told with a ``close`` event, and
#: the base ``retry:`` (ms) it gets: a client that should not come back at once
#: (replaced by a newer tab, kicked) waits longer than one moved to another worker.
CLOSE_REASONS: dict[str, tuple[bool, int]] = {
    "shutdown": (False, 0),
    "slow consumer": (False, 0),
    "overloaded": (False, 5000),
    "replaced": (True, 60000),
    "kicked": (True, 60000),
    "token expired": (True, 0),
    "resync": (False, 0),
    "store unavailable": (False, 1000),
}


def encode_notice(notice: Notice) -> bytes:
    """The SSE frame of a notice: ``id``, ``event: notice``, JSON ``data``."""
    return encode_event(notice.to_json(), event="notice", id=notice.id)


def encode_notice_body(notice: Notice) -> bytes:
    """The SSE frame of a notice without its ``id`` line (a stream with :class:`Positions` adds its own)."""
    return encode_event(notice.to_json(), event="notice")


def spread_retry(retry: int, window: float) -> int:
    """A ``retry:`` (ms): 0.5-1.5x ``retry``, or from 0.5x over ``window`` seconds when that is longer.

    The one rule for every ``retry:`` the server sends (so clients do not come back in
    step). A first frame and a shutdown's closing frame pass the host's ``window`` (the
    time it needs to take all its streams again): every client of a crashed or redeployed
    host then comes back spread over it.
    """
    low = retry / 2
    return int(low + random.uniform(0, max(retry, window * 1000)))


class Expiries:
    """Closes streams whose token expired, on one event-loop timer for them all.

    A heap of ``(time, n, stream)`` and one timer set for the earliest. A timer per stream
    cost 315 bytes each (100,000 gevent timers, measured); an entry here costs about 100,
    which is a tenth of what a live stream costs in all. An entry whose stream closed, or
    was given another time, is skipped when it comes up, and dropped sooner once such
    entries are the heap's larger part.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Stream]] = []
        self._n = 0
        self._timer: Handle | None = None
        self._at = float("inf")
        #: Entries whose stream closed or moved on (dropped at the next compaction).
        self.stale = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, stream: Stream, at: float | None) -> None:
        """Close ``stream`` with reason ``token expired`` at ``at`` (Unix time; ``None``: never)."""
        if stream.expires_at is not None:
            self.stale += 1  # its earlier entry, if any
        stream.expires_at = at
        if at is None:
            return
        self._n += 1
        heapq.heappush(self._heap, (at, self._n, stream))
        if at < self._at:
            self._arm(at)
        self._tidy()

    def forget(self, stream: Stream) -> None:
        """``stream`` closed: its entry is skipped (and dropped at the next compaction)."""
        if stream.expires_at is not None:
            stream.expires_at = None
            self.stale += 1
            self._tidy()

    def _tidy(self) -> None:
        """Drop the entries of closed streams once they are most of the heap (they hold the streams)."""
        if self.stale >= len(self._heap):
            self.close()
        elif self.stale > 64 and self.stale * 2 > len(self._heap):
            self._compact()

    def close(self) -> None:
        """Stop the timer and forget every entry."""
        if self._timer is not None:
            self._timer.close()
        self._timer, self._at, self._heap, self.stale = None, float("inf"), [], 0

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._at = at
        self._timer = call_later(at - time.time(), self._fire)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2].expires_at == e[0]]
        heapq.heapify(self._heap)
        self.stale = 0

    def _fire(self) -> None:
        self._timer, self._at = None, float("inf")
        heap, now = self._heap, time.time()
        due = []
        while heap and heap[0][0] <= now:
            at, _, stream = heapq.heappop(heap)
            if stream.expires_at == at:
                due.append(stream)
            else:  # closed (forgotten) or given another time
                self.stale = max(0, self.stale - 1)
        for stream in due:
            stream.expires_at = None
            stream.expire()
        if heap:
            self._arm(heap[0][0])


def closing_frame(reason: str, retry: int, window: float = 0.0) -> bytes:
    """What a stream sends when the server ends it: a comment, maybe a ``close`` event, a ``retry:``.

    ``window``: the seconds the host needs to take all its streams again. A stream ended by
    a shutdown (a deploy: every client of the worker comes back) spreads its ``retry:`` over
    it, as a first frame does (:func:`spread_retry`).
    """
    tell, minimum = CLOSE_REASONS.get(reason, (False, 0))
    frame = comment(reason)
    if tell:
        frame += encode_event(dumps({"reason": reason.replace(" ", "_")}), event="close")
    wait = spread_retry(max(retry, minimum), window if reason == "shutdown" else 0.0)
    return frame + encode_event(retry=wait)


class Stream:
    """One open stream of one user, as the hub sees it."""

    __slots__ = (
        "__weakref__",
        "close_reason",
        "closed",
        "cursor",
        "expires_at",
        "max_pending",
        "opened",
        "pending",
        "positions",
        "quiet",
        "round",
        "topics",
        "user_id",
        "writing_since",
    )

    def __init__(self, user_id: str, max_pending: int, topics: tuple[str, ...] = ()) -> None:
        self.user_id = user_id
        #: The topics whose notices this stream also gets.
        self.topics = topics
        self.max_pending = max_pending
        #: Bytes sent to this stream that the client has not taken yet.
        self.pending = 0
        #: The dispatch round of the last frame put.
        self.round = 0
        #: The newest notice id this stream has (frames at or below it are dropped).
        self.cursor = 0
        #: On a store whose audiences are ordered apart: the newest id per audience, which
        #: takes :attr:`cursor`'s place (each frame then gets the stream's own ``id`` line).
        self.positions: Positions | None = None
        self.closed = False
        self.close_reason = ""
        #: When a write that has not finished started (``0.0``: none in progress).
        self.writing_since = 0.0
        #: Whether nothing but heartbeats was written since the heartbeat loop's last visit.
        self.quiet = True
        #: When its token expires (Unix time), while :class:`Expiries` holds it to close then.
        self.expires_at: float | None = None
        self.opened = time.monotonic()

    def put(self, seq: int, frame: bytes, round_: int, key: str | None = None) -> bool:
        """Send or queue the frame of notice ``seq`` in dispatch round ``round_``; ``False``: it fell behind.

        A frame of a notice at or below :attr:`cursor` is dropped (a replay sent it);
        ``seq=0`` is a frame that is no notice (an inbox change), always sent. With ``key``
        (the notice's audience, on a store whose audiences are ordered apart), ``frame`` has
        no ``id`` line: it is sent after the stream's :attr:`positions`, if it moves them.

        Behind means: at the first frame of a new round, more than
        :attr:`max_pending` bytes of earlier rounds are still unsent. A single
        large round (a batch publish) never evicts a client that keeps up.
        """
        if self.closed:
            return True
        if round_ != self.round:
            if self.pending > self.max_pending:
                return False
            self.round = round_
        self._write(seq, frame, key)
        return True

    def expire(self) -> None:
        """Close the stream because its token expired (the client comes back with a new one)."""
        self.close("token expired")

    def close(self, reason: str) -> None:
        """End the stream (the client resumes from its ``Last-Event-ID``); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.pending = 0
        self._end()

    # -- what each way of writing does ----------------------------------------

    def _write(self, seq: int, frame: bytes, key: str | None) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def heartbeat(self) -> None:
        """Send a heartbeat if nothing was written since the last call."""
        raise NotImplementedError

    def abort(self) -> None:
        """Break a write that is stuck (the client stopped reading)."""
        raise NotImplementedError


class QueuedStream(Stream):
    """Frames queue here, bounded; the stream's greenlet (or thread) takes and yields them."""

    __slots__ = ("_beat", "_event", "_frames", "_greenlet", "token_expires")

    def __init__(self, user_id: str, max_pending: int, topics: tuple[str, ...] = ()) -> None:
        super().__init__(user_id, max_pending, topics)
        #: When its token expires (Unix time): the expiry starts once it is live.
        self.token_expires: float | None = None
        # Made by the first take() that waits: a stream handed over at once never needs one.
        self._event: Event | None = None
        self._frames: list[tuple[int, bytes, str | None]] = []
        self._beat = False
        self._greenlet: t.Any = None
        if gevent_active():
            import gevent

            self._greenlet = gevent.getcurrent()

    def _write(self, seq: int, frame: bytes, key: str | None) -> None:
        self.pending += len(frame)
        self._frames.append((seq, frame, key))
        if self._event is not None:
            self._event.set()

    def heartbeat(self) -> None:
        """Ask the stream's greenlet to send a heartbeat, if nothing was written since the last call."""
        if not self.quiet:
            self.quiet = True
            return
        if not self.closed and not self._frames:
            self._beat = True
            if self._event is not None:
                self._event.set()

    def oldest_queued(self, key: str | None = None) -> int | None:
        """The id of the oldest notice waiting to be sent (of audience ``key``, if given), else ``None``."""
        return min((seq for seq, _, k in self._frames if seq and (key is None or k == key)), default=None)

    def take(self, timeout: float | None = None) -> bytes | None:
        """Wait up to ``timeout`` (``None``: for ever) for frames; return them, ``None`` once closed.

        Returns ``b""`` when the wait ended with nothing to send. Notices at or
        below :attr:`cursor` (already sent by a replay) are skipped. ``timeout=0``
        does not wait at all (gevent's ``Event.wait(0)`` would still go round
        the event loop: about 9 % of opening a stream, measured with py-spy).
        """
        event = self._event
        if timeout != 0:
            if event is None:  # before the checks below: a put after them sets it
                event = self._event = new_event()
            if not self._frames and not self._beat and not self.closed:
                event.wait(timeout)
        if self.closed:
            return None
        if event is not None:
            event.clear()
        frames, self._frames, self.pending = self._frames, [], 0
        positions = self.positions
        if positions is not None:
            data = b"".join(
                [
                    frame if not seq else positions.id_line() + frame
                    for seq, frame, key in frames
                    if not seq or positions.advance(key, seq)  # type: ignore[arg-type]
                ]
            )
        else:
            cursor = self.cursor
            data = b"".join([frame for seq, frame, _ in frames if seq > cursor or not seq])
            if frames:
                self.cursor = max(cursor, *(seq for seq, _, _ in frames))
        if data:
            self.quiet = False
        elif self._beat:
            data = HEARTBEAT
        self._beat = False
        return data

    def _end(self) -> None:
        self._frames.clear()
        if self._event is not None:
            self._event.set()  # the greenlet wakes, sends the closing frame and returns

    def abort(self) -> None:
        """Kill the stream's greenlet, stuck in a write, with ``ECONNRESET`` (the server drops the socket)."""
        greenlet = self._greenlet
        if greenlet is not None and not greenlet.dead:
            error = ConnectionResetError(errno.ECONNRESET, "send timeout: client stopped reading")
            greenlet.kill(error, block=False)


class SocketStream(Stream):
    """A handed-over stream: the hub writes to its socket's descriptor itself, never blocking."""

    __slots__ = ("_hub", "_out", "_reading", "_writing", "fd", "framing")

    def __init__(self, queued: Stream, fd: int, framing: Framing, hub: Hub) -> None:
        super().__init__(queued.user_id, queued.max_pending, queued.topics)
        for name in ("cursor", "positions", "round", "quiet", "opened"):
            setattr(self, name, getattr(queued, name))
        self.fd = fd
        self.framing = framing
        self._hub = hub
        #: Framed bytes the socket has not taken yet (``None``: none, the usual case).
        self._out: bytearray | None = None
        self._writing: Handle | None = None
        self._reading: Handle | None = watch_fd(fd, write=False, func=self._on_readable)

    def _write(self, seq: int, frame: bytes, key: str | None) -> None:
        if key is not None:
            positions = self.positions
            if positions is not None and positions.advance(key, seq):
                self._send(positions.id_line() + frame)
        elif seq > self.cursor:
            self.cursor = seq
            self._send(frame)
        elif not seq:
            self._send(frame)

    def heartbeat(self) -> None:
        """Write a heartbeat if nothing was written since the last call (and nothing waits)."""
        if not self.quiet:
            self.quiet = True
            return
        if not self.closed and not self._out:
            self._send(HEARTBEAT)
            self.quiet = True  # a heartbeat is not activity

    def abort(self) -> None:
        """Nothing to break: closing a handed-over stream already drops its socket."""

    def _send(self, data: bytes) -> None:
        wire = self.framing.wrap(data)
        self.quiet = False
        out = self._out
        if out:
            out += wire
            self.pending = len(out)
            return
        try:
            written = os.write(self.fd, wire)
        except BlockingIOError:
            written = 0
        except OSError:
            self.close("disconnected")
            return
        if written < len(wire):
            out = self._out = bytearray(memoryview(wire)[written:])
            self.pending = len(out)
            self.writing_since = time.monotonic()
            self._writing = watch_fd(self.fd, write=True, func=self._on_writable)

    def _on_writable(self) -> None:
        out = self._out
        if not out:
            return
        try:
            written = os.write(self.fd, out)
        except BlockingIOError:
            return
        except OSError:
            self.close("disconnected")
            return
        del out[:written]
        self.pending = len(out)
        if out:
            self.writing_since = time.monotonic()  # it reads, however slowly
        else:
            self._out = None
            self.writing_since = 0.0
            if self._writing is not None:
                self._writing.close()
                self._writing = None

    def _on_readable(self) -> None:
        # A client sends nothing on an event stream: end of file (or an
        # error) means it went away. Anything else is read and ignored.
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close("disconnected")

    def _end(self) -> None:
        fd, self.fd = self.fd, -1
        for watcher in (self._reading, self._writing):
            if watcher is not None:
                watcher.close()
        self._reading = self._writing = None
        out, self._out = self._out or bytearray(), None
        self.writing_since = 0.0
        hub = self._hub
        if self.close_reason != "disconnected":
            # What a queued stream would send last, written as far as the socket
            # takes it now: a client too slow for it reconnects anyway.
            frame = closing_frame(self.close_reason, hub.retry, hub.reconnect_window())
            out += self.framing.wrap(frame) + self.framing.end
            with contextlib.suppress(OSError):
                os.write(fd, out)
        os.close(fd)
        hub.disconnect(self)
