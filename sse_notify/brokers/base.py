"""The broker interface, and the plumbing every store shares.

Every backend (``memory://``, ``sqlite://``, ``redis://``) implements :class:`Broker`, and
``tests/brokers/contract.py`` runs one contract suite against each of them so they cannot
drift apart. :class:`StoreBase` holds what they would otherwise each write again:

- the **per-process connection**: opened at first use in each process, and again in a
  forked child (gunicorn imports the app in its master and forks the workers);
- the **translation of errors**: the backend's own exceptions become
  :class:`~sse_notify.errors.BrokerUnavailable` (unreachable) or
  :class:`~sse_notify.errors.BrokerError`, and a closed store raises
  :class:`~sse_notify.errors.BrokerClosed`;
- the **one feed per process**: :meth:`Broker.subscribe` is taken once per process, and
  a forked child may take its own;
- **safe forks**: ``os.fork`` waits until no thread of this process is inside a store call
  (or a backend's own OS thread inside its C library: :attr:`StoreBase._gate`), and the child
  gets fresh locks and per-process state (:meth:`StoreBase._forked`). Without it, a child
  forked while the feed thread was in SQLite inherits SQLite's lock held forever and hangs in
  its first ``sqlite3.connect``; under gevent the hooks only reset the child's state;
- the **guarded feed callback**: the feed hands notices and :class:`~sse_notify.control.Control`
  records to the :class:`FeedHandler` in store order, and a failing handler is logged,
  never stops the feed;
- ``publish``, ``publish_many`` and ``publish_once`` over one ``_publish``;
- **grouping**: a notice with a ``group`` in its delivery header folds into the unread entry of
  that user and group (:meth:`StoreBase._folded`), inside the store's transaction, so that
  concurrent publishes from any worker or host fold one after another.

Two rules every backend keeps:

1. **Stored, then announced.** :meth:`Broker.publish` returns only after the notice is
   durable in the store (as durable as the backend is), and only then is it announced on
   the feed. Replay can therefore always return what a subscriber may have seen live.
2. **One feed per process.** The backend delivers every new notice and control record, in
   store order, to the one handler of its process: every one, or (targeted Redis) every one
   of the users the process follows (:meth:`Broker.follow`), every broadcast and every
   control record that is not about one user. Streams never read the feed themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import typing as t
import weakref
from dataclasses import dataclass, field

from ..concurrency import gevent_active, pid, thread_lock
from ..control import Control
from ..delivery import PreferenceStore, fold
from ..errors import BrokerClosed, BrokerError, BrokerUnavailable, IdempotencyKeyReused
from ..fallback import RecordStore
from ..inbox import InboxState, InboxStore
from ..notices import TOPIC_MARK, Notice
from ..positions import BROADCAST_KEY, Positions
from ..presence import PresenceStore
from ..schedule import SchedulerStore

__all__ = [
    "BROADCAST_KEY",
    "CONTROL_KEY",
    "Broker",
    "FeedHandler",
    "Followed",
    "Published",
    "Replay",
    "Request",
    "StoreBase",
    "plan_replay",
    "replay_publish",
]

log = logging.getLogger("sse_notify.brokers")

#: Key under which control records are stored (not a valid user id, so never replayed).
CONTROL_KEY = "!"

C = t.TypeVar("C")
T = t.TypeVar("T")

#: What a store keeps and announces: notices, and control records among them.
Item: t.TypeAlias = "Notice | Control"
#: A publish request: its ``(user_id, data_json)`` items, and its ``(key, fingerprint, ttl)`` if any.
Request: t.TypeAlias = "tuple[t.Sequence[tuple[str | None, str]], tuple[str, str, float] | None]"


class FeedHandler(t.Protocol):
    """**Protocol:** what the feed of a process hands new items to (the hub)."""

    def handle_notices(self, notices: t.Sequence[Notice]) -> None:
        """New notices, in cursor order, once per batch."""
        ...

    def handle_control(self, record: Control) -> None:
        """A control record, in its place among the notices."""
        ...


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resuming subscriber must be sent before live notices.

    ``reset`` is ``None`` when the cursor was good, ``"expired"`` when notices
    after it were already dropped by retention, ``"unknown"`` when the store
    never issued it. ``cursor`` is where replay starts (the given cursor, or
    the first one still complete after a reset); ``notices`` are the user's and
    the broadcasts after it, in order.
    """

    notices: list[Notice]
    cursor: int
    reset: str | None = None
    #: On a store whose audiences are ordered apart: where replay starts per audience.
    positions: Positions | None = field(default=None, compare=False)


class Followed(t.NamedTuple):
    """What :meth:`Broker.follow` tells a new stream when the feed only now follows its user or topic."""

    #: Where a new stream starts: a cursor read before the feed followed.
    cursor: int
    #: Whether a notice came after :attr:`cursor` that the feed may not bring (read it from the store).
    missed: bool
    #: On a store whose audiences are ordered apart (:attr:`Broker.positional`): the newest id the
    #: feed handed over per key. A new stream starts there (before what waits in its queue).
    positions: dict[str, int] | None = None


class Published(t.NamedTuple):
    """What :meth:`Broker.publish_once` did: the notices, and whether they were stored earlier."""

    notices: list[Notice]
    replayed: bool


def replay_publish(
    key: str, fingerprint: str, stored: tuple[str, int, str], items: t.Sequence[tuple[str | None, str]]
) -> Published:
    """The notices an earlier publish under ``key`` stored, rebuilt from the repeated request.

    :param stored: the earlier publish's ``(fingerprint, first cursor, created_at)``;
        its notices had consecutive cursors, in the order of ``items``.
    :raises IdempotencyKeyReused: if the request differs from the earlier one.
    """
    earlier, first, created_at = stored
    if earlier != fingerprint:
        raise key_reused(key)
    return Published(
        [Notice.stored(first + i, user_id, created_at, data) for i, (user_id, data) in enumerate(items)], True
    )


def key_reused(key: str) -> IdempotencyKeyReused:
    """The error for an ``Idempotency-Key`` sent again with another request."""
    return IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was already used for a different request; use a new key for new notices"
    )


def parse_cursor(last_event_id: str | None) -> int | None:
    """The integer cursor in a ``Last-Event-ID``, or ``None`` if it is not one."""
    if last_event_id is None:
        return None
    text = last_event_id.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


def plan_replay(last_event_id: str, floor: int, head: int) -> tuple[int, str | None]:
    """Decide where a replay starts.

    :param last_event_id: what the client sent.
    :param floor: the highest cursor whose notices retention dropped for this
        user (or for broadcasts); a cursor below it has missed something.
    :param head: the newest cursor the store has issued.
    :returns: ``(cursor, reset)`` as in :class:`Replay`.
    """
    cursor = parse_cursor(last_event_id)
    if cursor is None or cursor > head:
        return head, "unknown"
    if cursor < floor:
        return floor, "expired"
    return cursor, None


def topic_keys(topics: t.Iterable[str]) -> list[str]:
    """The keys a store keeps these topics' notices under (``#<topic>``)."""
    return [TOPIC_MARK + topic for topic in topics]


def stored_item(seq: int, key: str, created_at: str, data: str) -> Item | None:
    """The notice or control record a store row holds (``None``: a record this version cannot read)."""
    if key == CONTROL_KEY:
        try:
            return Control.from_json(data)
        except ValueError as exc:
            log.warning("skipping control record %d: %s", seq, exc)
            return None
    return Notice.stored(seq, None if key == BROADCAST_KEY else key, created_at, data)


class Broker(InboxStore, PresenceStore, SchedulerStore, PreferenceStore, RecordStore, t.Protocol):
    """**Protocol:** a notice store with replay, a per-process feed, inbox marks, presence, a scheduler,
    preferences and users' records (contacts, push subscriptions)."""

    #: Whether notices survive a restart of every process.
    durable: bool
    #: Whether audiences are stored out of id order relative to each other (Redis Cluster):
    #: then a stream resumes from a position per audience (:mod:`sse_notify.positions`).
    positional: bool

    def publish(self, user_id: str | None, data_json: str) -> Notice:
        """Store one notice (``user_id=None``: a broadcast), then announce it.

        :param data_json: a JSON object as compact text (see ``notices.dumps``), after its
            delivery header if it has one (``notices.stored_text``).
        :raises BrokerError: if it could not be stored; then nothing is announced.
        """
        ...

    def publish_many(self, items: t.Sequence[tuple[str | None, str]]) -> list[Notice]:
        """Store several notices in one transaction (all or none), then announce them."""
        ...

    def publish_once(
        self, items: t.Sequence[tuple[str | None, str]], key: str, fingerprint: str, ttl: float
    ) -> Published:
        """:meth:`publish_many`, once per ``key`` within ``ttl`` seconds.

        The first call stores the notices and remembers ``key`` in the same
        transaction. A later call with the key stores nothing and returns the
        first call's notices (``replayed=True``); concurrent calls are
        serialized by the store, so exactly one of them stores.

        :param fingerprint: identifies the request (users and data); a key sent
            again with another fingerprint raises :class:`~sse_notify.errors.IdempotencyKeyReused`.
        """
        ...

    def publish_requests(self, requests: t.Sequence[Request]) -> list[Published | BaseException]:
        """Several publishes at once, each as :meth:`publish_many` (or, with ``(key, fingerprint, ttl)``,
        :meth:`publish_once`) would store it; in one transaction where the store can.

        A request that fails alone (a key reused) gets its own error, in its place.
        """
        ...

    def publish_control(self, record: Control) -> None:
        """Announce a control record to every process's feed, in order with the notices; never replayed."""
        ...

    def replay(self, user_id: str, last_event_id: str, topics: t.Sequence[str] = ()) -> Replay:
        """The notices for ``user_id`` (own, broadcasts and ``topics``') after a client's cursor."""
        ...

    def head(self) -> int:
        """The newest cursor issued (0 if none)."""
        ...

    def subscribe(self, handler: FeedHandler) -> None:
        """Start this process's one feed: ``handler`` gets every later notice and control record, in order.

        :raises RuntimeError: if this process already has a feed.
        :raises BrokerError: if the store cannot be reached; a later call may try again.
        """
        ...

    def follow(self, keys: t.Sequence[str]) -> Followed | None:
        """Make this process's feed bring the notices of ``keys`` (user ids, ``#<topic>``) from now on.

        A stream calls it with its user and topics after joining the hub and before it reads
        the store. A store whose feed brings everything returns ``None`` at once. One that
        routes notices to the processes that follow their user or topic (targeted Redis)
        returns ``None`` when this process already followed each, else, once the feed is sure
        to bring every later notice, a :class:`Followed`: the cursor it read before, and
        whether a notice of one of ``keys`` came after that cursor meanwhile (it may have been
        published before the feed followed, so a new stream reads what the store holds after
        the cursor).

        :raises BrokerError: if the feed cannot follow (the store is down).
        """
        ...

    def unfollow(self, key: str) -> None:
        """This process holds no stream of ``key`` any more (the feed may stop bringing its notices)."""
        ...

    def trim_expired(self) -> int:
        """Drop notices older than the retention age; returns how many were dropped."""
        ...

    def ping(self) -> None:
        """Raise :class:`~sse_notify.errors.BrokerUnavailable` if the store is unreachable."""
        ...

    def close(self) -> None:
        """Stop the feed (waiting for it to end) and release connections."""
        ...


class StoreBase(t.Generic[C]):
    """The plumbing every store shares (see the module docstring); ``C`` is its connection.

    A backend sets :attr:`unavailable_errors` and :attr:`failure_errors` and implements
    :meth:`_connect`, :meth:`_publish`, :meth:`_start_feed` and :meth:`_stop_feed`.
    """

    #: The backend's exceptions that mean "the store cannot be reached" (answered 503).
    unavailable_errors: t.ClassVar[tuple[type[BaseException], ...]] = ()
    #: The backend's exceptions that mean "the store failed" (answered 500).
    failure_errors: t.ClassVar[tuple[type[BaseException], ...]] = ()
    #: Whether calls must not overlap on one connection (they hold :attr:`_lock`).
    serialized: t.ClassVar[bool] = True
    #: Whether audiences are stored out of id order relative to each other (see :class:`Broker`).
    positional = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._calls: t.ContextManager[t.Any] = self._lock if self.serialized else contextlib.nullcontext()
        #: Held by a backend's own OS thread around its calls into a C library (fork waits for it).
        self._gate = thread_lock()
        self._conn: C | None = None
        self._conn_pid = -1
        self._closed = False
        self._feed_pid = -1
        self._handler: FeedHandler | None = None
        _stores.add(self)

    # -- forks -------------------------------------------------------------

    def _hold_for_fork(self) -> None:
        # Under gevent no other greenlet can be inside a C call now; real threads can.
        if not gevent_active():
            self._lock.acquire()
        self._gate.acquire()

    def _release_after_fork(self) -> None:
        self._gate.release()
        if not gevent_active():
            self._lock.release()

    def _forked(self) -> None:
        """In a forked child: fresh locks, and nothing of the parent's feed (a backend adds its own state)."""
        self._lock = threading.RLock()
        self._calls = self._lock if self.serialized else contextlib.nullcontext()
        self._gate = thread_lock()

    # -- what a backend implements ---------------------------------------

    def describe(self) -> str:
        """The store, for messages: ``SQLite store /path``, ``Redis at host:port``."""
        raise NotImplementedError

    def _connect(self) -> C:
        """Open this process's connection (may raise one of the backend's errors)."""
        raise NotImplementedError

    def _disconnect(self, connection: C) -> None:
        """Close this process's connection (at :meth:`close`)."""

    def _failed(self, connection: C) -> None:
        """Clean up after a failed call (roll back an open transaction)."""

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        """Store ``items`` (once per ``once = (key, fingerprint, ttl)``, when given), then announce them."""
        raise NotImplementedError

    def _start_feed(self, handler: FeedHandler) -> None:
        """Start delivering every later item to ``handler`` (in the background)."""
        raise NotImplementedError

    def _stop_feed(self) -> None:
        """Stop the feed of this process and wait until it has (at :meth:`close`)."""

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each ``(key, due, payload)`` until its due time, replacing entries of this kind and key."""
        raise NotImplementedError

    # -- what every backend shares -----------------------------------------

    def schedule(self, kind: str, key: str, due: float, payload: str) -> None:
        """Keep the entry until ``due``, replacing any of this kind and key."""
        self.schedule_many(kind, [(key, due, payload)])

    # -- the per-process connection and its errors -------------------------

    def _connection(self) -> C:
        connection = self._conn
        if connection is not None and self._conn_pid == pid():
            return connection
        with self._lock:
            if self._conn is None or self._conn_pid != pid():
                # First use in this process, or a fork inherited the parent's (which must
                # not be used here: SQLite forbids it, Redis would share sockets).
                self._conn = self._connect()
                self._conn_pid = pid()
            return self._conn

    def _run(self, work: t.Callable[[C], T]) -> T:
        """Run ``work`` on this process's connection, with the backend's errors translated."""
        if self._closed:
            raise BrokerClosed(f"{self.describe()} is closed")
        with self._calls:
            try:
                connection = self._connection()
            except self.unavailable_errors + self.failure_errors as exc:
                raise BrokerUnavailable(f"cannot open {self.describe()}: {exc}") from exc
            try:
                return work(connection)
            except BaseException as exc:
                self._failed(connection)  # whatever failed: no transaction is left open
                if isinstance(exc, self.unavailable_errors):
                    raise BrokerUnavailable(f"{self.describe()} is unreachable: {exc}") from exc
                if isinstance(exc, self.failure_errors):
                    raise BrokerError(f"{self.describe()}: {exc}") from exc
                raise

    # -- publishing ------------------------------------------------------

    def publish(self, user_id: str | None, data_json: str) -> Notice:
        """Store one notice, then announce it."""
        return self._publish([(user_id, data_json)], None).notices[0]

    def publish_many(self, items: t.Sequence[tuple[str | None, str]]) -> list[Notice]:
        """Store several notices in one transaction (all or none), then announce them."""
        return self._publish(items, None).notices

    def publish_once(
        self, items: t.Sequence[tuple[str | None, str]], key: str, fingerprint: str, ttl: float
    ) -> Published:
        """Store the notices and the key together, unless the key was used within ``ttl`` seconds."""
        return self._publish(items, (key, fingerprint, ttl))

    def publish_requests(self, requests: t.Sequence[Request]) -> list[Published | BaseException]:
        """Several publishes, one after another (a store with transactions does them in one)."""
        results: list[Published | BaseException] = []
        for items, once in requests:
            try:
                results.append(self._publish(items, once))
            except (BrokerError, IdempotencyKeyReused) as exc:
                results.append(exc)
        return results

    @staticmethod
    def _folded(
        text: str, created_at: str, previous: Notice | None, state: InboxState | None
    ) -> tuple[str, int | None]:
        """A grouped notice's text, folded into ``previous`` while that entry is unread; the id it replaces.

        Each store calls this inside its transaction with the group's current entry (``None``:
        none, or no longer stored) and its user's inbox state, then stores the text, removes the
        replaced entry and points the group at the new one (``delivery.fold`` has the rule).
        """
        live = (
            previous is not None
            and state is not None
            and previous.id not in state.archived
            and not state.is_read(previous.id)
        )
        folded = fold(text, created_at, previous if live else None)
        return folded, (t.cast(Notice, previous).id if live else None)

    @staticmethod
    def _check_items(items: t.Sequence[tuple[str | None, str]]) -> None:
        """Refuse (all of) a batch with an item that is not ``(str | None, str)``."""
        for index, (user_id, data) in enumerate(items):
            if not isinstance(data, str) or (user_id is not None and not isinstance(user_id, str)):
                raise BrokerError(f"notice {index}: user_id and data_json must be str")

    # -- the feed ----------------------------------------------------------

    def subscribe(self, handler: FeedHandler) -> None:
        """Start this process's one feed (again in a forked child)."""
        with self._lock:
            if self._feed_pid == pid():
                raise RuntimeError("this process already has a feed")
            self._feed_pid = pid()
            self._handler = handler
        try:
            self._start_feed(handler)
        except BaseException:
            with self._lock:
                self._feed_pid, self._handler = -1, None  # a later call tries again
            raise

    def follow(self, keys: t.Sequence[str]) -> Followed | None:
        """This feed brings every notice (each store but targeted Redis): nothing to do."""
        return None

    def unfollow(self, key: str) -> None:
        """This feed brings every notice: nothing to stop."""

    @property
    def _feeding(self) -> bool:
        """Whether this process has a feed."""
        return self._feed_pid == pid() and self._handler is not None

    def _deliver(self, items: t.Sequence[Item | None]) -> None:
        """Hand ``items`` to this process's handler in order: runs of notices, and each control record.

        A handler that fails is logged; the feed goes on.
        """
        handler = self._handler
        if handler is None or self._feed_pid != pid():
            return
        run: list[Notice] = []
        for item in items:
            if isinstance(item, Notice):
                run.append(item)
                continue
            if run:
                self._hand(handler.handle_notices, run)
                run = []
            if item is not None:
                self._hand(handler.handle_control, item)
        if run:
            self._hand(handler.handle_notices, run)

    @staticmethod
    def _hand(method: t.Callable[[T], None], value: T) -> None:
        try:
            method(value)
        except Exception:
            log.exception("feed handler failed")

    def ping(self) -> None:
        """Raise :class:`BrokerUnavailable` if the store does not answer."""
        self._run(self._ping)

    def _ping(self, connection: C) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the feed (and wait for it), then release this process's connection; once."""
        if self._closed:
            return
        self._closed = True
        if self._feeding:
            self._stop_feed()
        with self._lock:
            connection, self._conn = self._conn, None
            if connection is not None and self._conn_pid == pid():
                self._disconnect(connection)


#: Every store of this process, for the fork hooks.
_stores: weakref.WeakSet[StoreBase[t.Any]] = weakref.WeakSet()
_held: list[StoreBase[t.Any]] = []


def _before_fork() -> None:
    _held[:] = list(_stores)
    for store in _held:
        store._hold_for_fork()


def _after_fork_in_parent() -> None:
    for store in _held:
        store._release_after_fork()
    _held.clear()


def _after_fork_in_child() -> None:
    for store in _held:
        store._forked()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
