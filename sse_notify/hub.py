"""The per-process hub: ``user_id -> open connections`` and the fan-out to them.

One hub per process (per gunicorn worker). It subscribes once to the store's
feed; for each new notice it encodes the SSE bytes once and hands the same
``bytes`` object to every local connection of that user (every connection, for
a broadcast). Each connection has a bounded buffer; one that falls behind is
closed and resumes from its ``Last-Event-ID``, so nothing is lost and memory
never grows without bound.

Everything is started lazily in the process that serves streams, because
gunicorn may import the app in its master before forking workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import secrets
import signal
import socket
import threading
import time
import typing as t
import weakref

from . import telemetry
from .brokers import Broker
from .concurrency import Event, Handle, call_later, gevent_active, new_event, spawn, spawn_later, watch_fd
from .errors import BrokerClosed, BrokerError
from .events import comment, encode_event
from .inbox import STATE_KEY
from .notices import Notice, dumps
from .presence import LIFETIME_INTERVALS

__all__ = ["Connection", "Hub"]

log = logging.getLogger("sse_notify.hub")


#: Reserved "user ids" (not valid user ids) of control records on the feed.
KICK = "!kick"
#: From a feed that lost notices it cannot recover (see ``brokers/redis.py``).
RESYNC = "!resync"

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


#: A comment line: keeps proxies and the client's idle timers from closing a quiet stream.
HEARTBEAT = comment()


def encode_notice(notice: Notice) -> bytes:
    """The SSE frame of a notice: ``id``, ``event: notice``, JSON ``data``."""
    return encode_event(notice.to_json(), event="notice", id=notice.id)


class _NoWake:
    """The event of a detached stream: nobody waits on it."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        return False


_NO_WAKE = _NoWake()


class Connection:
    """One open stream, reached in one of two ways.

    **Yielded** (any WSGI server): frames queue here, bounded, and the
    stream's own greenlet (or thread) takes and yields them.

    **Detached** (gunicorn + gevent, see ``handoff.py``): once the stream is
    live, :meth:`detach` gives it the socket's file descriptor and the
    gunicorn request ends. :meth:`put` writes each frame from the fan-out loop
    with one non-blocking ``os.write``; what the socket does not take waits in
    :attr:`pending` bytes, written by an event-loop watcher, and every later
    frame queues behind it, so the order on the wire is the order of
    :meth:`put`. Another watcher notices at once when the client goes away.
    No greenlet waits for a detached stream.
    """

    __slots__ = (
        "__weakref__",
        "_beat",
        "_event",
        "_frames",
        "_greenlet",
        "_hub",
        "_out",
        "_reading",
        "_writing",
        "chunked",
        "close_reason",
        "closed",
        "cursor",
        "expiry",
        "fd",
        "max_pending",
        "opened",
        "pending",
        "quiet",
        "round",
        "user_id",
        "writing_since",
    )

    def __init__(self, user_id: str, max_pending: int, event: Event) -> None:
        self.user_id = user_id
        self.max_pending = max_pending
        self._event = event
        self._frames: list[tuple[int, bytes]] = []
        self._beat = False
        self.pending = 0
        self.round = 0
        self.cursor = 0
        self.closed = False
        self.close_reason = ""
        self.writing_since = 0.0
        self.quiet = True  # nothing but the preamble written yet
        self.expiry: Handle | None = None
        self.opened = time.monotonic()
        # Detached streams only:
        self.fd = -1
        self.chunked = False
        self._out = bytearray()  # framed bytes the socket has not taken yet
        self._hub: Hub | None = None
        self._reading: Handle | None = None
        self._writing: Handle | None = None
        self._greenlet: t.Any = None
        if gevent_active():
            import gevent

            self._greenlet = gevent.getcurrent()

    @property
    def detached(self) -> bool:
        """Whether the hub writes to this stream's socket itself."""
        return self.fd >= 0

    def put(self, seq: int, frame: bytes, round_: int) -> bool:
        """Send or queue a frame of dispatch round ``round_``; ``False`` if the client fell behind.

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
        if self.fd >= 0:
            if seq > self.cursor:
                self.cursor = seq
                self._send(frame)
            return True
        self.pending += len(frame)
        self._frames.append((seq, frame))
        self._event.set()
        return True

    def heartbeat(self) -> None:
        """Send a heartbeat if nothing was written since the last call."""
        if not self.quiet:
            self.quiet = True
            return
        if self.closed:
            return
        if self.fd >= 0:
            if not self._out:
                self._send(HEARTBEAT)
                self.quiet = True  # a heartbeat is not activity
        elif not self._frames:
            self._beat = True
            self._event.set()

    def take(self, timeout: float | None = None) -> bytes | None:
        """Wait up to ``timeout`` (``None``: for ever) for frames; return them, ``None`` once closed.

        Returns ``b""`` when the wait ended with nothing to send. Frames at or
        below :attr:`cursor` (already sent by a replay) are skipped. ``timeout=0``
        does not wait at all (gevent's ``Event.wait(0)`` would still go round
        the event loop: about 9 % of opening a stream, measured with py-spy).
        """
        if timeout != 0 and not self._frames and not self._beat and not self.closed:
            self._event.wait(timeout)
        if self.closed:
            return None
        self._event.clear()
        frames, self._frames, self.pending = self._frames, [], 0
        cursor = self.cursor
        data = b"".join([frame for seq, frame in frames if seq > cursor])
        if frames:
            self.cursor = max(cursor, frames[-1][0])
        if data:
            self.quiet = False
        elif self._beat:
            data = HEARTBEAT
        self._beat = False
        return data

    # -- detached streams ---------------------------------------------------

    def detach(self, fd: int, chunked: bool, hub: Hub) -> None:
        """Write to ``fd`` (non-blocking, ours to close) from the hub from now on, as chunks or not."""
        self.fd = fd
        self.chunked = chunked
        self._hub = hub
        self._greenlet = None
        self._event = _NO_WAKE  # nobody waits any more: drop the event (fewer objects for the GC)
        self._reading = watch_fd(fd, write=False, func=self._on_readable)

    def _wire(self, data: bytes) -> bytes:
        return b"%X\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def _send(self, data: bytes) -> None:
        wire = self._wire(data)
        self.quiet = False
        if self._out:
            self._out += wire
            self.pending = len(self._out)
            return
        try:
            written = os.write(self.fd, wire)
        except BlockingIOError:
            written = 0
        except OSError:
            self.close("disconnected")
            return
        if written < len(wire):
            self._out += memoryview(wire)[written:]
            self.pending = len(self._out)
            self.writing_since = time.monotonic()
            self._writing = watch_fd(self.fd, write=True, func=self._on_writable)

    def _on_writable(self) -> None:
        try:
            written = os.write(self.fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            self.close("disconnected")
            return
        del self._out[:written]
        self.pending = len(self._out)
        if self._out:
            self.writing_since = time.monotonic()  # it reads, however slowly
        else:
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

    def _close_detached(self) -> None:
        fd, self.fd = self.fd, -1
        for watcher in (self._reading, self._writing):
            if watcher is not None:
                watcher.close()
        self._reading = self._writing = None
        hub, self._hub = self._hub, None
        out, self._out = self._out, bytearray()
        self.writing_since = 0.0
        if self.close_reason != "disconnected" and hub is not None:
            # What a yielded stream would send last, written as far as the
            # socket takes it now: a client too slow for it reconnects anyway.
            out += self._wire(hub.closing_frame(self.close_reason))
            if self.chunked:
                out += b"0\r\n\r\n"
            with contextlib.suppress(OSError):
                os.write(fd, out)
        os.close(fd)
        if hub is not None:
            hub.disconnect(self)

    # -- both ----------------------------------------------------------------

    def expire(self) -> None:
        """Close the stream because its token expired (the client comes back with a new one)."""
        self.close("token expired")

    def close(self, reason: str) -> None:
        """End the stream: a yielded one at its next wake-up, a detached one now (the client resumes)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._frames.clear()
        self.pending = 0
        if self.expiry is not None:
            self.expiry.close()
            self.expiry = None
        if self.fd >= 0:
            self._close_detached()
        else:
            self._event.set()

    def abort(self) -> None:
        """Break a write that is stuck (the client stopped reading): drop the socket."""
        greenlet = self._greenlet
        if greenlet is not None and not greenlet.dead:
            import errno

            error = ConnectionResetError(errno.ECONNRESET, "send timeout: client stopped reading")
            greenlet.kill(error, block=False)


def _descriptors_for_streams() -> int:
    """How many streams this process's open-files limit leaves room for (one descriptor each)."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    # Keep some for the listener, the store, log files and requests in flight.
    return max(1, soft - max(64, soft // 20))


class Hub:
    """Per-process registry of open connections and fan-out of the store's feed."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_pending: int = 1 << 20,
        send_timeout: float = 30.0,
        sweep_interval: float = 60.0,
        retry: int = 2000,
        max_streams: int = 50000,
        max_streams_per_user: int = 20,
        heartbeat: float = 15.0,
        presence_interval: float = 1.0,
    ) -> None:
        self.broker = broker
        self.presence_interval = presence_interval
        self.heartbeat = heartbeat
        self.max_streams = max_streams
        self.max_streams_per_user = max_streams_per_user
        self.max_pending = max_pending
        self.send_timeout = send_timeout
        self.sweep_interval = sweep_interval
        self.retry = retry
        # Per user, connections in the order they opened (a dict as an ordered set).
        self.users: dict[str, dict[Connection, None]] = {}
        self.connections: set[Connection] = set()
        self._pid = -1
        self._stopped_in = -1
        self._signal_in = -1
        self._lock = threading.Lock()
        self.evicted = 0
        self.refused = 0
        #: The newest notice id the feed handed to :meth:`dispatch` (``None``: none yet).
        #: A stream registered now gets every later one live, so a new client starts here.
        self.cursor: int | None = None
        self._round = 0
        self._capacity = max_streams
        #: This process's name in the store's presence records (set when the hub starts).
        self.worker_id = ""
        #: Users whose number of streams here changed since the last presence write.
        self._presence_dirty: set[str] = set()

    # -- lifecycle --------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether this process is shutting down (no stream may stay open)."""
        return self._stopped_in == os.getpid()

    def ensure_started(self) -> None:
        """Subscribe this process to the store's feed, once (after a fork, again)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self.users, self.connections = {}, set()
            self._presence_dirty = set()
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
            self._capacity = min(self.max_streams, _descriptors_for_streams())
            self.cursor = None  # a forked child's feed starts afresh
            self.broker.subscribe(self.dispatch)  # may raise BrokerError: then retried at the next stream
            with contextlib.suppress(BrokerError):  # else each new stream asks the store, until a dispatch
                self.cursor = self.broker.head()
            self.install_shutdown_signal()
            spawn(self._housekeeping, name="sse-notify-housekeeping")
            spawn(self._heartbeats, name="sse-notify-heartbeats")
            spawn(self._presence_writer, name="sse-notify-presence")
            self._pid = os.getpid()

    def install_shutdown_signal(self) -> None:
        """Extend this process's SIGTERM handler (if a server set one) to close every stream.

        Called when the app is created (in a gunicorn worker, right after the
        worker set its handlers, so a SIGTERM that arrives before the first
        stream is not missed) and again when the hub starts (covers
        ``preload_app``, where the app was created in the master).
        """
        if self._signal_in == os.getpid():
            return
        # gunicorn's worker turns SIGTERM (stop, or the old workers of a HUP
        # reload) into "finish current requests, up to graceful_timeout". Open
        # streams never finish by themselves, so we end them ourselves and the
        # worker exits in seconds. We chain to the handler that was there.
        # (signal.signal raises ValueError outside the main thread, e.g. under
        # a threaded dev server: then there is no worker signal to follow.)
        # Only a server's own graceful handler is extended: with the default
        # disposition (SIGTERM kills at once) there is nothing to speed up.
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return

        def on_term(signum: int, frame: t.Any) -> None:
            spawn(self.shutdown, name="sse-notify-shutdown")
            previous(signum, frame)

        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, on_term)
            self._signal_in = os.getpid()

    def shutdown(self) -> None:
        """End every open stream now and refuse new ones; clients reconnect elsewhere and resume."""
        self._stopped_in = os.getpid()
        count = len(self.connections)
        for conn in list(self.connections):
            conn.close("shutdown")
        log.info("closed %d streams for shutdown", count)
        if self.worker_id:
            try:
                self.broker.presence_leave(self.worker_id)
            except BrokerError as exc:  # its records expire by themselves
                telemetry.store_failed("presence", exc)

    def _housekeeping(self) -> None:
        last_sweep = time.monotonic()
        tick = max(0.2, min(5.0, self.send_timeout / 4))
        while True:
            time.sleep(tick)
            now = time.monotonic()
            self._abort_stuck_writers(now)
            if now - last_sweep >= self.sweep_interval:
                last_sweep = now
                try:
                    dropped = self.broker.trim_expired()
                except BrokerError as exc:
                    telemetry.store_failed("sweep", exc)  # tried again at the next sweep
                    continue
                except Exception:
                    log.exception("retention sweep failed")
                    continue
                else:
                    if dropped:
                        log.info("retention dropped %d expired notices", dropped)

    def _heartbeats(self) -> None:
        # One loop for every stream of the process (not a timer per stream and
        # wait): every step it visits the next slice of the streams, so each
        # is visited once per heartbeat interval and the writes are spread
        # over the interval instead of arriving as one burst. Short steps keep
        # each slice small: 10,000 streams at a 5 s heartbeat are 200 writes
        # (about 2 ms) every 0.1 s, not a 20 ms pause every second.
        # The round's list holds weak references: a stream that ends during the
        # round is freed at once, not when the round reaches it.
        step = min(0.1, self.heartbeat / 4)
        while True:
            batch = [weakref.ref(conn) for conn in self.connections]
            started = time.monotonic()
            done = 0
            while True:
                time.sleep(step)
                elapsed = time.monotonic() - started
                upto = len(batch)
                if elapsed < self.heartbeat:
                    upto = math.ceil(len(batch) * elapsed / self.heartbeat)
                for i in range(done, upto):
                    conn = batch[i]()
                    if conn is not None:
                        conn.heartbeat()
                conn = None
                done = upto
                if elapsed >= self.heartbeat:
                    break

    # -- presence ---------------------------------------------------------

    def _presence_writer(self) -> None:
        # Every interval: this worker's changed counts, and a renewal of its lifetime.
        while True:
            time.sleep(self.presence_interval)
            if not self.stopping and not self.write_presence():
                return  # the store was closed: this process is done with it

    def write_presence(self) -> bool:
        """Write this worker's changed stream counts to the store; ``False`` once the store is closed."""
        dirty, self._presence_dirty = self._presence_dirty, set()
        counts = {user_id: len(self.users.get(user_id, ())) for user_id in dirty}
        try:
            self.broker.presence_update(self.worker_id, counts, self.presence_interval * LIFETIME_INTERVALS)
        except BrokerClosed:
            return False
        except BrokerError as exc:
            self._presence_dirty |= dirty  # written with the next round
            telemetry.store_failed("presence", exc)
        return True

    def presence(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over every worker and host (users with none left out).

        This worker's own changes are written first, so its streams count at
        once; other workers' within :attr:`presence_interval`.
        """
        if self._pid == os.getpid() and self._presence_dirty and not self.stopping:
            self.write_presence()
        return self.broker.presence_counts(user_ids)

    def _abort_stuck_writers(self, now: float) -> None:
        # A function of its own, so no loop variable keeps a closed connection
        # alive while the housekeeping loop sleeps.
        for conn in list(self.connections):
            since = conn.writing_since
            if since and now - since > self.send_timeout:
                self._evict(conn, "send timeout")
                conn.abort()
                conn.writing_since = 0.0

    # -- connections ------------------------------------------------------

    def connect(self, user_id: str, expires_at: float | None = None, *, resumed: bool = False) -> Connection:
        """Register a new stream of ``user_id``; it gets every notice dispatched from now on.

        A stream born closed (``conn.closed``) must end at once: the worker is
        stopping, or holds :attr:`max_streams` already. Beyond
        :attr:`max_streams_per_user`, the user's oldest stream is closed, so a
        new tab always works. At ``expires_at`` (Unix time: its token's end)
        the stream is closed with reason ``token expired``. ``resumed``: the
        client sent a ``Last-Event-ID`` (counted and logged).
        """
        self.ensure_started()
        conn = Connection(user_id, self.max_pending, new_event())
        if self.stopping:
            conn.close("shutdown")
            return conn
        if len(self.connections) >= self._capacity:
            self.refused += 1
            telemetry.evicted(user_id, "overloaded")
            conn.close("overloaded")
            return conn
        mine = self.users.get(user_id, {})
        while len(mine) >= self.max_streams_per_user:
            self._evict(next(iter(mine)), "replaced")  # may drop the user's (now empty) entry
        self.connections.add(conn)
        self.users.setdefault(user_id, {})[conn] = None
        self._presence_dirty.add(user_id)
        telemetry.stream_opened(user_id, resumed)
        if expires_at is not None:
            conn.expiry = call_later(expires_at - time.time(), conn.expire)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a stream (idempotent)."""
        reason = conn.close_reason or "disconnected"
        if conn in self.connections:
            self.connections.discard(conn)
            conns = self.users.get(conn.user_id)
            if conns is not None:
                conns.pop(conn, None)
                if not conns:
                    del self.users[conn.user_id]
            self._presence_dirty.add(conn.user_id)
            telemetry.stream_closed(conn.user_id, reason, time.monotonic() - conn.opened)
        conn.close(reason)

    def kick(self, user_id: str) -> int:
        """Close every stream of ``user_id`` in this process; returns how many."""
        conns = list(self.users.get(user_id, ()))
        for conn in conns:
            self._evict(conn, "kicked")
        return len(conns)

    def _evict(self, conn: Connection, reason: str) -> None:
        self.evicted += 1
        telemetry.evicted(conn.user_id, reason)
        conn.close(reason)
        self.disconnect(conn)
        # If its writer is blocked in a write right now (a client that stopped
        # reading), the watchdog will not see it any more: check on it later.
        # An idle writer wakes, writes the closing frame and ends by itself.
        if conn.writing_since:
            spawn_later(self.send_timeout, lambda: self._abort_if_stuck(conn), name="sse-notify-evict")

    def _abort_if_stuck(self, conn: Connection) -> None:
        since = conn.writing_since
        if since and time.monotonic() - since >= self.send_timeout * 0.9:
            conn.abort()

    def dispatch(self, notices: t.Sequence[Notice]) -> None:
        """Fan notices out to this process's connections (called by the store's feed)."""
        self._round += 1
        round_ = self._round
        handed = 0
        for notice in notices:
            if notice.user_id is not None and notice.user_id.startswith("!"):
                self._control(notice)  # not a cursor: a resync's id is made up
                continue
            self.cursor = notice.id
            if notice.user_id is None:
                targets: list[Connection] = list(self.connections)
            else:
                found = self.users.get(notice.user_id)
                if not found:
                    continue
                targets = list(found)
            frame = encode_notice(notice)
            handed += len(targets)
            for conn in targets:
                if not conn.put(notice.id, frame, round_):
                    self._evict(conn, "slow consumer")
        if handed:
            telemetry.delivered(handed)

    def _control(self, notice: Notice) -> None:
        if notice.user_id == STATE_KEY:
            record = notice.data
            found = self.users.get(record.get("user_id", ""))
            if found:
                # No id: a state change is not replayed (a reconnect gets a snapshot instead).
                frame = encode_event(dumps(record["data"]), event=str(record["event"]))
                for conn in list(found):
                    if not conn.put(notice.id, frame, self._round):
                        self._evict(conn, "slow consumer")
        elif notice.user_id == KICK:
            user_id = notice.data.get("user_id")
            if isinstance(user_id, str):
                self.kick(user_id)
        elif notice.user_id == RESYNC:
            # The feed lost notices it cannot recover live: every client
            # resumes from its own Last-Event-ID instead.
            for conn in list(self.connections):
                self._evict(conn, "resync")

    def closing_frame(self, reason: str) -> bytes:
        """What a stream sends when the server ends it: a comment, maybe a ``close`` event, a ``retry:``."""
        tell, minimum = CLOSE_REASONS.get(reason, (False, 0))
        frame = comment(reason)
        if tell:
            frame += encode_event(dumps({"reason": reason.replace(" ", "_")}), event="close")
        return frame + encode_event(retry=self.jittered_retry(minimum))

    def jittered_retry(self, minimum: int = 0) -> int:
        """A reconnection time spread over 0.5-1.5x :attr:`retry` (avoids a reconnect storm)."""
        return int(max(self.retry, minimum) * random.uniform(0.5, 1.5))

    def stats(self) -> dict[str, int]:
        """Open streams and users of this process."""
        return {
            "streams": len(self.connections),
            "users": len(self.users),
            "evicted": self.evicted,
            "refused": self.refused,
        }
