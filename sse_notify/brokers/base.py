"""The broker interface: where notices are stored, replayed, and announced.

Every backend (``memory://``, ``sqlite://``, later ``redis://``) implements
:class:`Broker`, and ``tests/test_brokers.py`` runs one contract suite against
each of them so they cannot drift apart.

Two rules every backend keeps:

1. **Stored, then announced.** :meth:`Broker.publish` returns only after the
   notice is durable in the store (as durable as the backend is), and only
   then is it announced on the feed. Replay can therefore always return
   what a subscriber may have seen live.
2. **One feed per process.** :meth:`Broker.subscribe` is called once per process
   (by the hub); the backend delivers every new notice, in cursor order, to that
   one callback. Connections never talk to the store's feed themselves.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ..errors import IdempotencyKeyReused
from ..inbox import InboxStore
from ..notices import Notice
from ..presence import PresenceStore

__all__ = ["Broker", "FeedCallback", "OnePublishCall", "Published", "Replay", "plan_replay", "replay_publish"]

#: Called by a backend with new notices, in cursor order, once per batch.
FeedCallback = t.Callable[[t.Sequence[Notice]], None]

#: Key under which broadcasts are stored (not a valid user id).
BROADCAST_KEY = "*"


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


class Published(t.NamedTuple):
    """What :meth:`Broker.publish_once` did: the notices, and whether they were stored earlier."""

    notices: list[Notice]
    replayed: bool


class OnePublishCall:
    """``publish``, ``publish_many`` and ``publish_once`` of a backend that does all three in ``_publish``."""

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        """Store ``items`` (once per ``once = (key, fingerprint, ttl)``, when given), then announce them."""
        raise NotImplementedError

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
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for a different request; use a new key for new notices"
        )
    return Published(
        [Notice(first + i, user_id, created_at, data) for i, (user_id, data) in enumerate(items)], True
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


class Broker(InboxStore, PresenceStore, t.Protocol):
    """**Protocol:** a notice store with replay, a per-process feed, inbox marks and presence."""

    #: Whether notices survive a restart of every process.
    durable: bool

    def publish(self, user_id: str | None, data_json: str) -> Notice:
        """Store one notice (``user_id=None``: a broadcast), then announce it.

        :param data_json: a JSON object as compact text (see ``notices.dumps``).
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

    def replay(self, user_id: str, last_event_id: str) -> Replay:
        """The notices for ``user_id`` (own and broadcasts) after a client's cursor."""
        ...

    def head(self) -> int:
        """The newest cursor issued (0 if none)."""
        ...

    def subscribe(self, callback: FeedCallback) -> None:
        """Start this process's one feed: ``callback`` gets every new notice, in order."""
        ...

    def trim_expired(self) -> int:
        """Drop notices older than the retention age; returns how many were dropped."""
        ...

    def ping(self) -> None:
        """Raise :class:`~sse_notify.errors.BrokerUnavailable` if the store is unreachable."""
        ...

    def close(self) -> None:
        """Stop the feed and release connections."""
        ...
