"""The per-process hub: the registry of open streams, and the fan-out of the store's feed to them.

One hub per app per process (per gunicorn worker), fed by the store's one feed of
the process (it is the feed's :class:`~sse_notify.brokers.base.FeedHandler`). For each
new notice it encodes the SSE bytes once and hands the same ``bytes`` object to every
local stream of that user (every stream, for a broadcast). Each stream has a bounded
buffer; one that falls behind is evicted and resumes from its ``Last-Event-ID``, so
nothing is lost and memory never grows without bound. Control records
(:mod:`~sse_notify.control`) go to one handler per kind.

The hub only keeps and fans out. A stream writes through :mod:`~sse_notify.streams`;
what runs in the background, and when the hub starts and stops, is
:mod:`~sse_notify.node`'s.
"""

from __future__ import annotations

import os
import time
import typing as t

from . import telemetry
from .control import Control, Kind
from .delivery import Preferences
from .events import encode_event
from .notices import TOPIC_MARK, Notice, dumps
from .positions import BROADCAST_KEY
from .streams import (
    Expiries,
    QueuedStream,
    SocketStream,
    Stream,
    encode_notice,
    encode_notice_body,
    spread_retry,
)

if t.TYPE_CHECKING:
    from .handoff import Framing

__all__ = ["Hub"]

#: CPU cores this host has (the reconnect rate is per core).
_CORES = os.cpu_count() or 1
#: The longest a reconnection is spread over (seconds), whatever the rate says: a client
#: should never be sent away for hours by a rate set too low.
MAX_RECONNECT_WINDOW = 300.0


class Hub:
    """Per-process registry of open streams and fan-out of the store's feed."""

    def __init__(
        self,
        *,
        max_pending: int = 1 << 20,
        retry: int = 2000,
        reconnect_rate: int = 1500,
        max_streams: int = 50000,
        max_streams_per_user: int = 20,
    ) -> None:
        self.max_pending = max_pending
        self.retry = retry
        #: New streams per second per CPU core this host takes when every client comes back.
        self.reconnect_rate = reconnect_rate
        #: Streams open on this host (every worker of its gunicorn master), as the worker's
        #: :class:`~sse_notify.admission.Admission` last counted them; else this process's.
        self.host_streams = 0
        self.max_streams = max_streams
        self.max_streams_per_user = max_streams_per_user
        #: How many streams this process takes (``max_streams``, or fewer under its open-files limit).
        self.capacity = max_streams
        #: Per user, streams in the order they opened. A tuple, not a dict as an ordered set:
        #: a user has one or a few streams, and a 1-tuple is 48 bytes against a dict's 224
        #: (17 MiB at 100,000 users, measured with sys.getsizeof).
        self.users: dict[str, tuple[Stream, ...]] = {}
        #: Per topic, the streams that follow it.
        self.topics: dict[str, dict[Stream, None]] = {}
        self.streams: set[Stream] = set()
        #: The token expiries of this process's live streams, on one timer.
        self.expiries = Expiries()
        #: Evicted streams whose last write had not finished (checked for a stuck writer).
        self.evicted_writers: set[Stream] = set()
        #: Whether this process is shutting down: new streams are refused.
        self.stopping = False
        self.evicted = 0
        self.refused = 0
        #: Whether the store's audiences are ordered apart (Redis Cluster): each stream then has
        #: its own ``id`` line, from its :attr:`~sse_notify.streams.Stream.positions`.
        self.positional = False
        #: The newest notice id the feed handed to :meth:`handle_notices` (``None``: none yet).
        #: A stream registered now gets every later one live, so a new client starts here.
        self.cursor: int | None = None
        #: Users whose number of streams here changed since :meth:`take_changed` was last called.
        self.changed: set[str] = set()
        #: The preferences of users with streams here, as the store had them when their first
        #: stream opened, then as the feed's ``PREFERENCES`` records bring them. Broadcasts skip
        #: the streams of users who muted their category.
        self.preferences: dict[str, Preferences] = {}
        #: Whether any user of the store has preferences (``None``: not known). ``False`` only
        #: while this process's feed runs (it turns ``True`` at the first ``PREFERENCES``
        #: record): then a new stream need not read its user's preferences (one that opens
        #: as the first preferences ever are set gets them a moment later, from the feed).
        self.any_preferences: bool | None = None
        #: Called with a user id (or ``#<topic>``) when the last stream here of that user (or
        #: following that topic) closed (the node sets it to the store's
        #: :meth:`~sse_notify.brokers.base.Broker.unfollow`).
        self.on_leave: t.Callable[[str], None] | None = None
        #: Called with the number of streams here after one opened or closed (the worker's
        #: :class:`~sse_notify.admission.Admission` stops accepting when it is full).
        self.on_count: t.Callable[[int], None] | None = None
        self._round = 0
        self._controls: dict[Kind, t.Callable[[Control], None]] = {
            Kind.KICK: self._on_kick,
            Kind.STATE: self._on_state,
            Kind.RESYNC: self._on_resync,
            Kind.PREFERENCES: self._on_preferences,
        }

    def reset(self, capacity: int) -> None:
        """Forget every stream (a forked child starts with none), taking at most ``capacity``."""
        self.users, self.streams, self.evicted_writers = {}, set(), set()
        self.expiries = Expiries()  # a forked child's timers are its parent's: start afresh
        self.topics = {}
        self.changed = set()
        self.preferences = {}
        self.any_preferences = None
        self.cursor = None
        self.stopping = False
        self.capacity = min(self.max_streams, capacity)

    def reconnect_window(self) -> float:
        """Seconds this host needs to take all its streams again: streams / (``reconnect_rate`` x cores).

        At most :data:`MAX_RECONNECT_WINDOW`.
        """
        streams = max(self.host_streams, len(self.streams))
        return min(MAX_RECONNECT_WINDOW, streams / (self.reconnect_rate * _CORES))

    def first_retry(self) -> int:
        """The ``retry:`` (ms) of a new stream's first frame: spread so a crash is no storm.

        Clients whose stream breaks without a closing frame come back after it, so it is
        spread over :meth:`reconnect_window`, and at least 0.5-1.5x :attr:`retry`.
        """
        return spread_retry(self.retry, self.reconnect_window())

    # -- the registry -------------------------------------------------------

    def connect(
        self,
        user_id: str,
        expires_at: float | None = None,
        *,
        resumed: bool = False,
        topics: tuple[str, ...] = (),
    ) -> QueuedStream:
        """Register a new stream of ``user_id``; it gets every notice handed to the hub from now on.

        A stream born closed (``stream.closed``) must end at once: the process is
        stopping, or holds :attr:`capacity` streams already. Beyond
        :attr:`max_streams_per_user`, the user's oldest stream is closed, so a
        new tab always works. At ``expires_at`` (Unix time: its token's end)
        the stream is closed with reason ``token expired`` (from when it goes live: at
        :meth:`hand_over`, or with :meth:`expire_at`). ``resumed``: the
        client sent a ``Last-Event-ID`` (counted and logged). ``topics``: the stream also gets
        the notices of these topics.
        """
        stream = QueuedStream(user_id, self.max_pending, topics)
        if self.stopping:
            stream.close("shutdown")
            return stream
        if len(self.streams) >= self.capacity:
            self.refused += 1
            telemetry.evicted(user_id, "overloaded")
            stream.close("overloaded")
            return stream
        while len(mine := self.users.get(user_id, ())) >= self.max_streams_per_user:
            self.evict(mine[0], "replaced")  # may drop the user's (now empty) entry
        self.streams.add(stream)
        self.users[user_id] = (*mine, stream)
        for topic in topics:
            self.topics.setdefault(topic, {})[stream] = None
        self.changed.add(user_id)
        telemetry.stream_opened(user_id, resumed)
        stream.token_expires = expires_at
        if self.on_count is not None:
            self.on_count(len(self.streams))
        return stream

    def hand_over(self, stream: QueuedStream, fd: int, framing: Framing) -> SocketStream:
        """Replace a live queued stream by one that writes to the socket ``fd`` itself (``handoff.py``)."""
        live = SocketStream(stream, fd, framing, self)
        self.streams.discard(stream)
        self.streams.add(live)
        mine = self.users[stream.user_id]
        # In its place among the user's streams, oldest first (one, the usual case: no generator).
        self.users[stream.user_id] = (
            (live,) if len(mine) == 1 else tuple(live if s is stream else s for s in mine)
        )
        for topic in stream.topics:
            followers = self.topics[topic]
            del followers[stream]
            followers[live] = None
        self.expire_at(live, stream.token_expires)
        return live

    def expire_at(self, stream: Stream, at: float | None) -> None:
        """Close ``stream`` with reason ``token expired`` at ``at`` (Unix time; ``None``: never)."""
        self.expiries.add(stream, at)

    def disconnect(self, stream: Stream) -> None:
        """Forget a stream (idempotent), and close it."""
        reason = stream.close_reason or "disconnected"
        if stream in self.streams:
            self.streams.discard(stream)
            mine = self.users.get(stream.user_id)
            if mine is not None:
                mine = tuple(s for s in mine if s is not stream)
                if mine:
                    self.users[stream.user_id] = mine
                else:
                    del self.users[stream.user_id]
                    self.preferences.pop(stream.user_id, None)
                    if self.on_leave is not None:
                        self.on_leave(stream.user_id)
            for topic in stream.topics:
                followers = self.topics.get(topic)
                if followers is not None:
                    followers.pop(stream, None)
                    if not followers:
                        del self.topics[topic]
                        if self.on_leave is not None:
                            self.on_leave(TOPIC_MARK + topic)
            self.changed.add(stream.user_id)
            telemetry.stream_closed(stream.user_id, reason, time.monotonic() - stream.opened)
            if self.on_count is not None:
                self.on_count(len(self.streams))
            self.expiries.forget(stream)
        stream.close(reason)

    def evict(self, stream: Stream, reason: str) -> None:
        """Close a stream for ``reason`` (a slow consumer, a kick...) and forget it."""
        self.evicted += 1
        telemetry.evicted(stream.user_id, reason)
        stream.close(reason)
        self.disconnect(stream)
        # If its writer is blocked in a write right now (a client that stopped
        # reading), the housekeeping loop checks on it later. An idle writer
        # wakes, writes the closing frame and ends by itself.
        if stream.writing_since:
            self.evicted_writers.add(stream)

    def kick(self, user_id: str) -> int:
        """Close every stream of ``user_id`` in this process; returns how many."""
        mine = list(self.users.get(user_id, ()))
        for stream in mine:
            self.evict(stream, "kicked")
        return len(mine)

    def close_all(self, reason: str) -> int:
        """Close every stream of this process; returns how many."""
        streams = list(self.streams)
        for stream in streams:
            stream.close(reason)
            self.disconnect(stream)
        return len(streams)

    def take_changed(self) -> dict[str, int]:
        """The users whose number of streams here changed since the last call, with that number."""
        changed, self.changed = self.changed, set()
        return {user_id: len(self.users.get(user_id, ())) for user_id in changed}

    def stats(self) -> dict[str, int]:
        """Open streams and users of this process."""
        return {
            "streams": len(self.streams),
            "users": len(self.users),
            "evicted": self.evicted,
            "refused": self.refused,
        }

    # -- the fan-out (the feed's handler) -------------------------------------

    def handle_notices(self, notices: t.Sequence[Notice]) -> None:
        """Fan notices out to this process's streams: one dispatch round."""
        self._round += 1
        round_ = self._round
        handed = 0
        for notice in notices:
            self.cursor = notice.id
            if notice.topic is not None:
                followers = self.topics.get(notice.topic)
                if not followers:
                    continue
                targets: list[Stream] = list(followers)
                if notice.meta_json and self.preferences:
                    targets = self._wanting(notice, targets)
            elif notice.user_id is None:
                targets = list(self.streams)
                if notice.meta_json and self.preferences:
                    targets = self._wanting(notice, targets)
            else:
                found = self.users.get(notice.user_id)
                if not found:
                    continue
                targets = list(found)
            handed += len(targets)
            if self.positional:
                frame = encode_notice_body(notice)
                key = notice.key or BROADCAST_KEY
                for stream in targets:
                    if not stream.put(notice.id, frame, round_, key):
                        self.evict(stream, "slow consumer")
                continue
            frame = encode_notice(notice)
            for stream in targets:
                if not stream.put(notice.id, frame, round_):
                    self.evict(stream, "slow consumer")
        if handed:
            telemetry.delivered(handed)

    def _wanting(self, notice: Notice, targets: list[Stream]) -> list[Stream]:
        """The streams of ``targets`` whose users want this broadcast (not a category they muted)."""
        meta = notice.meta
        category = meta.get("category")
        if category is None or meta.get("critical"):
            return targets
        preferences = self.preferences
        return [s for s in targets if s.user_id not in preferences or preferences[s.user_id].wants(category)]

    def wants(self, user_id: str, notice: Notice) -> bool:
        """Whether ``user_id`` (who has streams here) wants ``notice`` on a stream (a replayed one)."""
        preferences = self.preferences.get(user_id)
        if preferences is None or not notice.meta_json or notice.user_id is not None:
            return True
        meta = notice.meta
        return bool(meta.get("critical")) or preferences.wants(meta.get("category"))

    def handle_control(self, record: Control) -> None:
        """Act on a control record (one handler per :class:`~sse_notify.control.Kind`)."""
        self._controls[record.kind](record)

    def _on_kick(self, record: Control) -> None:
        if record.user_id is not None:
            self.kick(record.user_id)

    def _on_state(self, record: Control) -> None:
        found = self.users.get(record.user_id or "")
        if found:
            # No id: a state change is not replayed (a reconnect gets a snapshot instead),
            # and it is not a notice (seq 0: sent whatever the stream's cursor).
            frame = encode_event(dumps(record.data["data"]), event=str(record.data["event"]))
            for stream in list(found):
                if not stream.put(0, frame, self._round):
                    self.evict(stream, "slow consumer")

    def _on_preferences(self, record: Control) -> None:
        self.any_preferences = True
        user_id = record.user_id or ""
        found = self.users.get(user_id)
        if found:
            preferences = Preferences.checked(dict(record.data))
            self.preferences[user_id] = preferences
            frame = encode_event(preferences.to_json(), event="preferences")
            for stream in list(found):
                if not stream.put(0, frame, self._round):
                    self.evict(stream, "slow consumer")

    def _on_resync(self, record: Control) -> None:
        self.any_preferences = None  # a PREFERENCES record may be among what the feed lost
        # The feed lost notices it cannot recover live: every client resumes from its
        # own Last-Event-ID instead.
        for stream in list(self.streams):
            self.evict(stream, "resync")
