"""The service: what an app's sse_notify does, behind HTTP, the CLI and Python alike.

:class:`State` (``app.extensions["sse_notify"]``, reached with :func:`get_state`) checks
and publishes notices, issues tokens, kicks, answers presence and keeps inboxes. The
blueprint (``views.py``), the CLI (``cli.py``) and the module functions of
``extension.py`` are thin layers over it, so each rule is checked once, here or in
the pure modules it calls.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import typing as t
from dataclasses import dataclass

import orjson
from flask import Flask, current_app

from . import telemetry
from .auth import checked_ttl
from .brokers import Broker
from .brokers.base import Published
from .config import Settings
from .control import Control, Kind
from .errors import BrokerError, InvalidNotice, InvalidRequest, PayloadTooLarge
from .hub import Hub
from .inbox import InboxFilter, InboxPage, StateChange, change, list_page, read_all
from .node import Node
from .notices import Notice, checked_idempotency_key, checked_user_id, dumps
from .presence import Presence
from .schedule import Due
from .security import Security

if t.TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["EXTENSION_KEY", "MAX_PRESENCE_USERS", "State", "get_state"]

T = t.TypeVar("T")

#: Where an app keeps its state: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY = "sse_notify"
#: The most users one presence query may ask about.
MAX_PRESENCE_USERS = 1000
#: The scheduler's kind for a notice published when it falls due.
DUE_NOTICE = "notice"


@dataclass
class State:
    """What one app's sse_notify holds: ``app.extensions["sse_notify"]``."""

    settings: Settings
    broker: Broker
    hub: Hub
    node: Node
    security: Security
    url_prefix: str = ""

    def __post_init__(self) -> None:
        self.node.due.actions[DUE_NOTICE] = self._publish_due

    # -- publishing ---------------------------------------------------------

    def publish_many(
        self, items: t.Sequence[tuple[str | None, t.Any]], *, idempotency_key: str | None = None
    ) -> list[Notice]:
        """Check, store and announce notices (``user_id=None``: broadcast).

        :param idempotency_key: store these notices once: the same key with the
            same notices within ``SSE_NOTIFY_IDEMPOTENCY_TTL`` returns the notices
            stored the first time (see :meth:`publish_once`).
        :raises InvalidNotice: for a bad user id (:class:`~sse_notify.errors.InvalidUserId`)
            or data that is not a JSON object; then nothing is stored.
        :raises PayloadTooLarge: for data over ``SSE_NOTIFY_MAX_BODY`` bytes.
        """
        if idempotency_key is not None:
            return self.publish_once(items, idempotency_key).notices
        started = time.perf_counter()
        notices = self._store(lambda: self.broker.publish_many(self._checked(items)))
        telemetry.published(notices, time.perf_counter() - started)
        return notices

    def publish_once(self, items: t.Sequence[tuple[str | None, t.Any]], idempotency_key: str) -> Published:
        """Store notices once per ``idempotency_key``; ``replayed`` says whether they were stored before.

        :raises IdempotencyKeyReused: if the key came earlier with other notices.
        :raises InvalidRequest: for a key that is not 1-200 printable ASCII characters.
        """
        checked_idempotency_key(idempotency_key)
        started = time.perf_counter()
        checked = self._checked(items)
        digest = hashlib.sha256()
        for (user_id, text), (_, value) in zip(checked, items, strict=True):
            # Sorted keys: a retry that builds the same data in another order is the same request.
            try:
                data = dumps(value, sort_keys=True).encode()
            except TypeError:  # keys of several types (from Python, never from JSON) do not sort
                data = text.encode()
            digest.update(b"%b\0%d\0%b" % (b"*" if user_id is None else user_id.encode(), len(data), data))
        ttl = self.settings.idempotency_ttl
        done = self._store(
            lambda: self.broker.publish_once(checked, idempotency_key, digest.hexdigest(), ttl)
        )
        telemetry.published(done.notices, time.perf_counter() - started, replayed=done.replayed)
        return done

    @staticmethod
    def _store(work: t.Callable[[], T]) -> T:
        """Run a publish against the store, counting and logging a failure."""
        try:
            return work()
        except BrokerError as exc:
            telemetry.store_failed("publish", exc)
            raise

    def _checked(self, items: t.Sequence[tuple[str | None, t.Any]]) -> list[tuple[str | None, str]]:
        if len(items) > self.settings.max_batch:
            raise InvalidNotice(f"at most {self.settings.max_batch} notices per batch, got {len(items)}")
        checked: list[tuple[str | None, str]] = []
        limit = self.settings.max_body
        for index, (user_id, data) in enumerate(items):
            where = f"notice {index}: " if len(items) > 1 else ""
            if user_id is not None:
                checked_user_id(user_id, where)
            if not isinstance(data, dict):
                raise InvalidNotice(f"{where}data must be a JSON object, got {type(data).__name__}")
            try:
                text = dumps(data)
                size = len(text.encode())
            except UnicodeEncodeError as exc:
                raise InvalidNotice(
                    f"{where}data is not valid Unicode (an unpaired surrogate?): {exc}"
                ) from exc
            except (TypeError, ValueError, RecursionError) as exc:
                raise InvalidNotice(f"{where}data is not JSON-serializable: {exc}") from exc
            if size > limit:
                raise PayloadTooLarge(f"{where}data is larger than {limit} bytes", limit)
            checked.append((user_id, text))
        return checked

    def schedule_notice(self, user_id: str | None, data: dict[str, t.Any], due: float) -> str:
        """Check a notice now and keep it in the store's scheduler until ``due`` (Unix time); its key.

        A worker publishes it once due (within about a quarter of a second), exactly once
        even if that worker is killed meanwhile (see :meth:`_publish_due`).
        """
        ((user, text),) = self._checked([(user_id, data)])
        key = secrets.token_urlsafe(12)
        payload = dumps({"u": user, "d": text})
        self._store(lambda: self.broker.schedule(DUE_NOTICE, key, due, payload))
        return key

    def _publish_due(self, due: Due) -> None:
        """Publish a scheduled notice that fell due, once per entry.

        Under an idempotency key of its own (with a character no client key has), kept longer
        than a claim's lease: a worker that dies after publishing and before the scheduler
        forgets the entry leaves it to another worker, whose publish finds the key and stores
        nothing again.
        """
        entry = orjson.loads(due.payload)
        items = [(entry["u"], entry["d"])]
        key = f"\x1fdue:{due.key}"
        fingerprint = hashlib.sha256(due.payload.encode()).hexdigest()
        ttl = max(self.settings.idempotency_ttl, 4 * self.node.due.lease)
        started = time.perf_counter()
        done = self._store(lambda: self.broker.publish_once(items, key, fingerprint, ttl))
        telemetry.published(done.notices, time.perf_counter() - started, replayed=done.replayed)

    def notify(self, user_id: str, data: dict[str, t.Any], *, idempotency_key: str | None = None) -> Notice:
        """Store a notice for ``user_id`` and deliver it to every open stream of theirs."""
        return self.publish_many([(user_id, data)], idempotency_key=idempotency_key)[0]

    def broadcast(self, data: dict[str, t.Any], *, idempotency_key: str | None = None) -> Notice:
        """Store a notice for every user and deliver it to every open stream."""
        return self.publish_many([(None, data)], idempotency_key=idempotency_key)[0]

    # -- streams --------------------------------------------------------------

    def issue_token(self, user_id: str, ttl: float | None = None) -> str:
        """A connection token that opens ``user_id``'s stream for ``ttl`` seconds (default: the setting).

        :raises InvalidRequest: for a ``ttl`` out of range (1 s to 30 days).
        """
        checked_user_id(user_id)
        return self.security.issue(user_id, self.security.token_ttl if ttl is None else checked_ttl(ttl))

    def kick(self, user_id: str) -> None:
        """Close every open stream of ``user_id``, on every worker (through the store's feed)."""
        self.broker.publish_control(Control(Kind.KICK, checked_user_id(user_id)))

    def presence(self, user_id: str) -> Presence:
        """Whether ``user_id`` has a stream open on any worker or host, and how many."""
        return self.presence_many([user_id])[user_id]

    def presence_many(self, user_ids: t.Sequence[str]) -> dict[str, Presence]:
        """:meth:`presence` of several users in one store query (at most :data:`MAX_PRESENCE_USERS`)."""
        if len(user_ids) > MAX_PRESENCE_USERS:
            raise InvalidRequest(
                f"at most {MAX_PRESENCE_USERS} users per presence query, got {len(user_ids)}"
            )
        for user_id in user_ids:
            checked_user_id(user_id)
        try:
            counts = self.node.presence_counts(user_ids)
        except BrokerError as exc:
            telemetry.store_failed("presence", exc)
            raise
        return {user_id: Presence(user_id, counts.get(user_id, 0)) for user_id in user_ids}

    # -- inboxes ------------------------------------------------------------

    def inbox(self, user_id: str, **page: Unpack[InboxFilter]) -> InboxPage:
        """A page of ``user_id``'s inbox, newest first, with the unread count (see :func:`list_page`)."""
        return list_page(self.broker, checked_user_id(user_id), **page)

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> StateChange:
        """Mark notices read, unread, archived or not; every open stream of the user is told.

        :raises ~sse_notify.errors.NoticeNotFound: if one is not in the user's inbox.
        """
        return self._announce(
            change(self.broker, checked_user_id(user_id), ids, read=read, archived=archived)
        )

    def mark_all_read(self, user_id: str) -> StateChange:
        """Mark everything in the inbox read; every open stream of the user is told."""
        return self._announce(read_all(self.broker, checked_user_id(user_id)))

    def _announce(self, state_change: StateChange) -> StateChange:
        # Through the store, like a notice, so streams on every worker and host get it.
        self.broker.publish_control(state_change.to_control())
        return state_change


def get_state(app: Flask | None = None) -> State:
    """The sse_notify state of ``app`` (default: the current app)."""
    app = app or current_app
    try:
        state: State = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("sse_notify is not set up on this app: call SSENotify(app) first") from None
    return state
