"""The service: what an app's sse_notify does, behind HTTP, the CLI and Python alike.

:class:`State` (``app.extensions["sse_notify"]``, reached with :func:`get_state`) checks
and publishes notices, issues tokens, kicks, answers presence and keeps inboxes. The
blueprint (``views.py``), the CLI (``cli.py``) and the module functions of
``extension.py`` are thin layers over it, so each rule is checked once, here or in
the pure modules it calls.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import typing as t
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from flask import Flask, current_app

from . import telemetry
from .auth import checked_topic_grants, checked_ttl
from .brokers import Broker
from .brokers.base import Published
from .channels import CONTACT_FIELDS, CONTACTS, checked_contacts
from .channels.email import EmailChannel
from .channels.push import MAX_SUBSCRIPTIONS, PUSH, PushChannel, checked_subscription, public_key
from .concurrency import Batcher
from .config import Settings
from .control import Control, Kind
from .delivery import (
    DEFAULT_PREFERENCES,
    DELIVERED,
    HELD,
    MAX_DELAY,
    NO_OPTIONS,
    OPTIONS,
    SCHEDULED,
    SUPPRESSED,
    Delivery,
    Options,
    Preferences,
    Receipt,
    checked_options,
    merge_group,
)
from .errors import (
    BrokerError,
    ChannelFailed,
    ConfigError,
    Conflict,
    InvalidNotice,
    InvalidOption,
    InvalidRequest,
    NoticeNotFound,
    PayloadTooLarge,
    RateLimited,
)
from .fallback import FALLBACK, SEND, Fallbacks, Message, SendFailed
from .hub import Hub
from .inbox import InboxFilter, InboxPage, StateChange, change, list_page, read_all, remove, returned, snooze
from .node import Node
from .notices import (
    TOPIC_MARK,
    Notice,
    checked_idempotency_key,
    checked_topic,
    checked_user_id,
    dumps,
    is_user,
    stored_text,
    topic_of,
    utc_iso,
)
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
#: The scheduler's kind for a snoozed notice that comes back when it falls due.
DUE_SNOOZE = "snooze"
#: What :meth:`Preferences.decide` answers for a notice delivered now.
_NOW: tuple[str, str | None, float | None] = (DELIVERED, None, None)


class _Delivery(t.NamedTuple):
    """One publish, checked, waiting for its round (:meth:`State._deliver_round`)."""

    items: t.Sequence[tuple[str | None, t.Any, Options]]
    checked: list[tuple[str | None, str]]
    metas: list[str]
    idempotency_key: str | None
    #: ``(key, fingerprint, ttl)`` with an idempotency key.
    once: tuple[str, str, float] | None


class _Plan(t.NamedTuple):
    """What a publish does: per item ``(status, reason, due)``, and what it stores now."""

    decided: list[tuple[str, str | None, float | None]]
    now_items: list[tuple[str | None, str]]
    slots: list[int]


#: The record kind of a topic's followers (kept under the topic's key, one record per user).
FOLLOWERS = "followers"


@dataclass
class State:
    """What one app's sse_notify holds: ``app.extensions["sse_notify"]``."""

    settings: Settings
    broker: Broker
    hub: Hub
    node: Node
    security: Security
    url_prefix: str = ""
    #: Email, push and webhook when a notice stays unread (``None``: none is set up).
    fallbacks: Fallbacks | None = None

    def __post_init__(self) -> None:
        self._test_emails: dict[str, float] = {}
        self.node.due.actions[DUE_NOTICE] = self._publish_due
        self.node.due.actions[DUE_SNOOZE] = self._wake
        if self.fallbacks is not None:
            self.node.due.actions[FALLBACK] = self.fallbacks.collect
            self.node.due.actions[SEND] = self.fallbacks.send
        #: Publishes that arrive together are one round: one read of their recipients'
        #: preferences, one store transaction (where the store has them) for what they deliver now.
        self._deliveries: Batcher[_Delivery, tuple[list[Receipt], bool]] = Batcher(self._deliver_round)

    # -- publishing ---------------------------------------------------------

    def deliver(
        self,
        items: t.Sequence[tuple[str | None, t.Any, Options]],
        *,
        idempotency_key: str | None = None,
        connection: t.Any = None,
    ) -> tuple[list[Receipt], bool]:
        """Check notices and their options, then deliver, schedule, hold or suppress each.

        Each recipient's preferences decide (:meth:`Preferences.decide`): a notice in a category
        they muted is suppressed, one sent during their quiet hours is held until the hours end
        (broadcasts only honour mutes, on each stream, see ``Hub``). What is delivered now is
        stored in one transaction; what waits goes to the store's scheduler. Everything is
        checked before anything is stored.

        :param connection: the app's own database connection or SQLAlchemy session, with its
            transaction open (PostgreSQL store only): everything is written in that transaction,
            so it is delivered if and only if the app commits (:func:`~sse_notify.brokers.postgres.joined`).
        :returns: a :class:`Receipt` per item, in order, and whether an earlier publish under
            ``idempotency_key`` had stored the notices delivered now.
        :raises InvalidNotice: for a bad user id, data or option; then nothing is stored.
        :raises ConfigError: for ``connection`` with a store other than PostgreSQL.
        """
        checked = self._checked([(user_id, data) for user_id, data, _ in items])
        if idempotency_key is not None:
            checked_idempotency_key(idempotency_key)
        metas: list[str] = []
        for index, ((user_id, text), (_, _, options)) in enumerate(zip(checked, items, strict=True)):
            if options.group is not None and not is_user(user_id):
                where = f"notice {index}: " if len(items) > 1 else ""
                raise InvalidOption(
                    f"{where}group needs a user_id (a broadcast or a topic's notice is not grouped)", "group"
                )
            metas.append(options.meta_json(text) if options is not NO_OPTIONS else "")
        once = None
        if idempotency_key is not None:
            fingerprint = self._fingerprint(items, metas)
            once = (idempotency_key, fingerprint, float(self.settings.idempotency_ttl))
        request = _Delivery(items, checked, metas, idempotency_key, once)
        if connection is None:
            return self._deliveries.submit(request)
        (answer,) = self._deliver_round([request], self._joined(connection))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _joined(self, connection: t.Any) -> Broker:
        """The store, on the app's connection and inside its transaction."""
        from .brokers.postgres import PostgresBroker, joined

        if not isinstance(self.broker, PostgresBroker):
            raise ConfigError(
                "connection= (publishing in your own transaction) needs the PostgreSQL store; with "
                f"{self.settings.broker_url.partition(':')[0]}:// publish after your commit "
                "(sse_notify.sqlalchemy.notify_after_commit)"
            )
        return joined(self.broker, connection)

    def _deliver_round(
        self, requests: list[_Delivery], store: Broker | None = None
    ) -> list[tuple[list[Receipt], bool] | BaseException]:
        """Deliver the publishes of one round: one read of preferences, then one store call for all.

        ``store``: where to write (the app's transaction); this process's store by default.
        """
        store = self.broker if store is None else store
        wanted = list(
            dict.fromkeys(
                u
                for r in requests
                for (u, _, o) in r.items
                if is_user(u) and o.due is None and not o.critical
            )
        )
        try:
            texts = store.preferences(wanted) if wanted else {}
        except BrokerError as exc:
            telemetry.store_failed("publish", exc)
            return [exc] * len(requests)
        preferences = {user_id: Preferences.from_json(text) for user_id, text in texts.items()}
        now = time.time()
        plans = [self._plan(request, preferences, now) for request in requests]
        storing = [index for index, plan in enumerate(plans) if plan.now_items]
        try:
            self._before_store(u for i in storing for u, _ in plans[i].now_items)
        except BrokerError as exc:
            telemetry.store_failed("publish", exc)
            return [exc] * len(requests)
        started = time.perf_counter()
        results = store.publish_requests([(plans[i].now_items, requests[i].once) for i in storing])
        seconds = time.perf_counter() - started
        stored = dict(zip(storing, results, strict=True))
        answers: list[tuple[list[Receipt], bool] | BaseException] = []
        for index, (request, plan) in enumerate(zip(requests, plans, strict=True)):
            result = stored.get(index)
            if isinstance(result, BaseException):
                if isinstance(result, BrokerError):
                    telemetry.store_failed("publish", result)
                answers.append(result)
                continue
            notices, replayed = (result.notices, result.replayed) if result is not None else ([], False)
            if result is not None:
                telemetry.published(notices, seconds, replayed=replayed)
                self._after_store(notices)
            try:
                answers.append((self._receipts(request, plan, notices, store), replayed))
            except BrokerError as exc:  # a notice to keep for later could not be
                telemetry.store_failed("publish", exc)
                answers.append(exc)
        return answers

    @staticmethod
    def _plan(request: _Delivery, preferences: dict[str, Preferences], now: float) -> _Plan:
        """What happens to each item of a publish, and what it delivers now, in order.

        A notice of a user and group already in this publish is merged into that one (one entry,
        both counted): ``slots`` maps each item to its place among ``now_items``.
        """
        plan = _Plan([], [], [])
        groups: dict[tuple[str | None, str], int] = {}
        for (user_id, text), meta, (_, _, options) in zip(
            request.checked, request.metas, request.items, strict=True
        ):
            plan.slots.append(len(plan.now_items))
            if options.due is not None:
                plan.decided.append((SCHEDULED, None, options.due))
                continue
            found = preferences.get(user_id) if user_id is not None else None
            outcome = _NOW if found is None else found.decide(options, now)
            plan.decided.append(outcome)
            if outcome[0] != DELIVERED:
                continue
            stored = stored_text(text, meta)
            if options.group is not None:
                place = groups.get((user_id, options.group))
                if place is not None:
                    plan.now_items[place] = (user_id, merge_group(plan.now_items[place][1], stored))
                    plan.slots[-1] = place
                    continue
                groups[user_id, options.group] = len(plan.now_items)
            plan.now_items.append((user_id, stored))
        return plan

    def _receipts(
        self, request: _Delivery, plan: _Plan, notices: list[Notice], store: Broker
    ) -> list[Receipt]:
        """What a publish did, per item; what waits is kept in the store's scheduler now."""
        receipts: list[Receipt] = []
        for index, ((user_id, text), meta, (status, reason, due)) in enumerate(
            zip(request.checked, request.metas, plan.decided, strict=True)
        ):
            if status == DELIVERED:
                receipts.append(Receipt(status, user_id, notices[plan.slots[index]]))
            elif status == SUPPRESSED:
                telemetry.withheld(status, user_id, reason)
                receipts.append(Receipt(status, user_id, reason=reason, data_json=text, meta_json=meta))
            else:
                key = self._scheduled_id(request.idempotency_key, index)
                self._wait(key, user_id, text, meta, t.cast(float, due), store)
                telemetry.withheld(status, user_id, reason)
                receipts.append(Receipt(status, user_id, None, key, due, reason, text, meta))
        return receipts

    def publish_many(
        self, items: t.Sequence[tuple[str | None, t.Any]], *, idempotency_key: str | None = None
    ) -> list[Notice]:
        """Check, store and announce notices (``user_id=None``: broadcast), without options.

        Unlike :meth:`deliver`, preferences do not apply: every notice is stored and announced.

        :param idempotency_key: store these notices once: the same key with the
            same notices within ``SSE_NOTIFY_IDEMPOTENCY_TTL`` returns the notices
            stored the first time (see :meth:`publish_once`).
        :raises InvalidNotice: for a bad user id (:class:`~sse_notify.errors.InvalidUserId`)
            or data that is not a JSON object; then nothing is stored.
        :raises PayloadTooLarge: for data over ``SSE_NOTIFY_MAX_BODY`` bytes.
        """
        if idempotency_key is not None:
            return self.publish_once(items, idempotency_key).notices
        return self._publish_now(self._checked(items))

    def publish_once(self, items: t.Sequence[tuple[str | None, t.Any]], idempotency_key: str) -> Published:
        """Store notices once per ``idempotency_key``; ``replayed`` says whether they were stored before.

        :raises IdempotencyKeyReused: if the key came earlier with other notices.
        :raises InvalidRequest: for a key that is not 1-200 printable ASCII characters.
        """
        checked_idempotency_key(idempotency_key)
        checked = self._checked(items)
        fingerprint = self._fingerprint([(u, d, NO_OPTIONS) for u, d in items], [""] * len(items))
        return self._publish_now_once(checked, idempotency_key, fingerprint)

    def _publish_now(self, items: list[tuple[str | None, str]]) -> list[Notice]:
        self._store(lambda: self._before_store(u for u, _ in items))
        started = time.perf_counter()
        notices = self._store(lambda: self.broker.publish_many(items))
        telemetry.published(notices, time.perf_counter() - started)
        self._after_store(notices)
        return notices

    def _publish_now_once(
        self, items: list[tuple[str | None, str]], key: str, fingerprint: str, ttl: float | None = None
    ) -> Published:
        self._store(lambda: self._before_store(u for u, _ in items))
        started = time.perf_counter()
        lifetime = self.settings.idempotency_ttl if ttl is None else ttl
        done = self._store(lambda: self.broker.publish_once(items, key, fingerprint, lifetime))
        telemetry.published(done.notices, time.perf_counter() - started, replayed=done.replayed)
        self._after_store(done.notices)
        return done

    def _before_store(self, user_ids: t.Iterable[str | None]) -> None:
        """Before user notices are stored: their fallback windows are kept (``fallback.py``)."""
        if self.fallbacks is not None:
            self.fallbacks.before_publish(u for u in user_ids if is_user(u))

    def _after_store(self, notices: t.Sequence[Notice]) -> None:
        if self.fallbacks is not None and notices:
            try:
                self.fallbacks.after_publish(notices)
            except BrokerError as exc:  # (the notice is stored: answer 201, and say what was missed)
                telemetry.store_failed("fallback", exc)

    @staticmethod
    def _fingerprint(items: t.Sequence[tuple[str | None, t.Any, Options]], metas: t.Sequence[str]) -> str:
        """What identifies a publish request: its users, data and options (not their due times)."""
        digest = hashlib.sha256()
        for (user_id, value, options), meta in zip(items, metas, strict=True):
            # Sorted keys: a retry that builds the same data in another order is the same request.
            try:
                data = dumps(value, sort_keys=True).encode()
            except TypeError:  # keys of several types (from Python, never from JSON) do not sort
                data = dumps(value).encode()
            if meta or options.due is not None:
                data += b"\0%b\0%d" % (meta.encode(), options.due is not None)
            digest.update(b"%b\0%d\0%b" % (b"*" if user_id is None else user_id.encode(), len(data), data))
        return digest.hexdigest()

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
            topic = topic_of(user_id)
            if topic is not None:
                checked_topic(topic, where)
            elif user_id is not None:
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

    @staticmethod
    def _scheduled_id(idempotency_key: str | None, index: int) -> str:
        """A new id for a notice that waits; made from the request's key, so a retry replaces it."""
        if idempotency_key is None:
            return "s" + secrets.token_hex(12)
        return "s" + hashlib.sha256(b"%b\0%d" % (idempotency_key.encode(), index)).hexdigest()[:24]

    def _wait(
        self, key: str, user_id: str | None, text: str, meta: str, due: float, store: Broker | None = None
    ) -> None:
        """Keep a checked notice in the store's scheduler until ``due`` (scheduled, or held)."""
        payload = dumps({"u": user_id, "d": text, "m": meta})
        self._store(lambda: (store or self.broker).schedule(DUE_NOTICE, key, due, payload))

    def _publish_due(self, due: Due) -> None:
        """Deliver a notice that waited (scheduled, or held for quiet hours), once per entry.

        The user's preferences decide again, as they are now: a category muted meanwhile is
        suppressed, and quiet hours that began meanwhile hold it again (a new due time for the
        same entry, which the claim's ``finish`` does not forget). The publish runs under an
        idempotency key of its own (with a character no client key has), kept longer than a
        claim's lease: a worker that dies after publishing and before the scheduler forgets
        the entry leaves it to another worker, whose publish finds the key and stores nothing
        again. The notice carries its ``scheduled_id``, so it can be found (and removed) by it.
        """
        entry = orjson.loads(due.payload)
        user_id, text, meta = entry["u"], entry["d"], entry.get("m", "")
        fields = orjson.loads(meta) if meta else {}
        if user_id is not None and not fields.get("critical"):
            options = Options(category=fields.get("category"))
            # At its due time at the earliest: a worker whose clock is a little behind does not
            # hold again a notice that fell due at the end of quiet hours.
            now = max(time.time(), due.due)
            status, reason, until = self.preference(user_id).decide(options, now)
            if status != DELIVERED:
                telemetry.withheld(status, user_id, reason)
            if status == SUPPRESSED:
                return
            if status == HELD:
                self._wait(due.key, user_id, text, meta, t.cast(float, until))
                return
        fields["scheduled_id"] = due.key
        items = [(user_id, stored_text(text, dumps(fields)))]
        key = f"\x1fdue:{due.key}"
        fingerprint = hashlib.sha256(due.payload.encode()).hexdigest()
        ttl = max(self.settings.idempotency_ttl, 4 * self.node.due.lease)
        self._publish_now_once(items, key, fingerprint, ttl)

    def cancel(self, user_id: str, scheduled_id: str) -> bool:
        """Cancel ``user_id``'s notice that waits under ``scheduled_id``; whether one waited."""
        checked_user_id(user_id)
        payload = self._store(lambda: self.broker.pending(DUE_NOTICE, scheduled_id))
        if payload is None or orjson.loads(payload)["u"] != user_id:
            return False
        return bool(self._store(lambda: self.broker.unschedule(DUE_NOTICE, scheduled_id)))

    def notify(self, user_id: str, data: dict[str, t.Any], **options: Unpack[Delivery]) -> Receipt:
        """Deliver a notice to ``user_id``'s open streams and inbox (or schedule, hold or suppress it).

        :param options: ``category``, ``critical``, ``send_at`` (an aware ``datetime`` or RFC
            3339 text), ``delay`` (seconds), ``group``; ``idempotency_key``; and ``connection``
            (write in the app's open transaction, see :meth:`deliver`).
        """
        return self.notify_many([(user_id, data)], **options)[0]

    def broadcast(self, data: dict[str, t.Any], **options: Unpack[Delivery]) -> Receipt:
        """Deliver a notice to every user (each stream honours its user's mutes), or schedule it."""
        return self.notify_many([(None, data)], **options)[0]

    def notify_topic(self, topic: str, data: dict[str, t.Any], **options: Unpack[Delivery]) -> Receipt:
        """Deliver a notice to every stream that follows ``topic`` (not to any inbox), or schedule it."""
        return self.notify_many([(TOPIC_MARK + checked_topic(topic), data)], **options)[0]

    def notify_many(
        self, items: t.Sequence[tuple[str | None, t.Any]], **options: Unpack[Delivery]
    ) -> list[Receipt]:
        """:meth:`deliver` several notices with the same options; what is delivered now is one transaction."""
        unknown = set(options) - set(OPTIONS) - {"idempotency_key", "connection"}
        if unknown:
            raise TypeError(f"unknown delivery option {sorted(unknown)[0]!r} (options: {', '.join(OPTIONS)})")
        key = options.pop("idempotency_key", None)
        connection = options.pop("connection", None)
        checked = checked_options(options, now=time.time())
        return self.deliver([(u, d, checked) for u, d in items], idempotency_key=key, connection=connection)[
            0
        ]

    # -- streams --------------------------------------------------------------

    def issue_token(self, user_id: str, ttl: float | None = None, topics: t.Sequence[str] = ()) -> str:
        """A connection token that opens ``user_id``'s stream for ``ttl`` seconds (default: the setting).

        :param topics: the topics the stream may follow (``?topics=``): names, or prefixes
            ending in ``*`` (``match-*``; ``*`` alone: any).
        :raises InvalidRequest: for a ``ttl`` out of range (1 s to 30 days), or a bad topic.
        """
        checked_user_id(user_id)
        ttl = self.security.token_ttl if ttl is None else checked_ttl(ttl)
        return self.security.issue(user_id, ttl, checked_topic_grants(topics))

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
        checked_user_id(user_id)
        return list_page(self.broker, user_id, preferences=self.preference(user_id), **page)

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> StateChange:
        """Mark notices read, unread, archived or not; every open stream of the user is told.

        :raises ~sse_notify.errors.NoticeNotFound: if one is not in the user's inbox.
        """
        checked_user_id(user_id)
        preferences = self.preference(user_id)
        return self._announce(
            change(self.broker, user_id, ids, read=read, archived=archived, preferences=preferences)
        )

    def mark_all_read(self, user_id: str) -> StateChange:
        """Mark everything in the inbox read; every open stream of the user is told."""
        checked_user_id(user_id)
        return self._announce(read_all(self.broker, user_id, self.preference(user_id)))

    def remove(self, user_id: str, notice_id: int | str) -> StateChange | None:
        """Remove a notice of ``user_id``: cancel it while it waits, or take it out of their inbox.

        :param notice_id: its id (a stored notice), or the ``scheduled_id`` a scheduled or held
            notice was given (before it is due, or after: then the notice it became).
        :returns: the inbox change every open stream of the user is told, or ``None`` for a
            notice cancelled before it was due.
        :raises ~sse_notify.errors.NoticeNotFound: if no such notice is theirs.
        :raises ~sse_notify.errors.Conflict: for a broadcast (archive it instead).
        """
        checked_user_id(user_id)
        if isinstance(notice_id, str):
            if self.cancel(user_id, notice_id):
                return None
            found = self._published_as(user_id, notice_id)
            if found is None:
                raise NoticeNotFound(f"no notice {notice_id!r} waits for {user_id} or is in their inbox")
            notice_id = found
        return self._announce(remove(self.broker, user_id, [notice_id], self.preference(user_id)))

    def snooze(self, user_id: str, notice_id: int, until: float) -> StateChange:
        """Hide a notice of ``user_id``'s inbox until ``until`` (Unix time); then it is back, unread, live.

        Every open stream of the user gets a ``snooze`` event now, and the notice again (a ``notice``
        event with ``"returned": "snooze"``) when the time comes: whichever worker claims the
        scheduler's entry sends it, once (a snooze moved or ended meanwhile is left alone).
        The snooze itself is a time in the user's marks, so the notice is listed again at that
        time even if the store's scheduler were lost.

        :raises ~sse_notify.errors.NoticeNotFound: if it is not in the user's inbox.
        :raises ~sse_notify.errors.InvalidOption: for a time not in the future, or too far.
        """
        checked_user_id(user_id)
        now = time.time()
        if not now < until <= now + MAX_DELAY:
            raise InvalidOption(
                f"a snooze ends within {MAX_DELAY // 86400} days from now, in the future", "until"
            )
        done = snooze(self.broker, user_id, notice_id, until, self.preference(user_id))
        payload = dumps({"u": user_id, "id": notice_id, "until": until})
        self._store(lambda: self.broker.schedule(DUE_SNOOZE, f"{user_id}/{notice_id}", until, payload))
        return self._announce(done)

    def _wake(self, due: Due) -> None:
        """A snooze ended: the notice is unread again, and every stream of the user gets it back."""
        entry = orjson.loads(due.payload)
        user_id, seq = entry["u"], int(entry["id"])
        if not self.broker.wake(user_id, seq, float(entry["until"])):
            return  # snoozed again (another entry of the same key), or woken already
        record = returned(self.broker, user_id, seq, self.preference(user_id))
        if record is not None:
            self.broker.publish_control(record)

    def _published_as(self, user_id: str, scheduled_id: str) -> int | None:
        """The id of the notice of ``user_id``'s inbox that was scheduled as ``scheduled_id``."""
        ids = self.broker.inbox_ids(user_id)
        for notice in self.broker.inbox_notices(user_id, ids):
            if (
                notice.user_id == user_id
                and notice.meta_json
                and notice.meta.get("scheduled_id") == scheduled_id
            ):
                return notice.id
        return None

    # -- topics' followers (#17) --------------------------------------------------

    def followers(self, topic: str) -> list[str]:
        """The users who follow ``topic`` (whose inboxes get its ``inbox=true`` notices), sorted."""
        key = TOPIC_MARK + checked_topic(topic)
        return sorted(self._store(lambda: self.broker.user_records(FOLLOWERS, key)))

    def set_follower(self, topic: str, user_id: str, follows: bool) -> bool:
        """Make ``user_id`` follow ``topic`` (or no longer); whether they did before."""
        key = TOPIC_MARK + checked_topic(topic)
        checked_user_id(user_id)
        return bool(
            self._store(
                lambda: self.broker.set_user_record(FOLLOWERS, key, user_id, "1" if follows else None)
            )
        )

    def notify_followers(
        self, topic: str, data: t.Any, options: Options = NO_OPTIONS, *, idempotency_key: str | None = None
    ) -> tuple[list[Receipt], bool]:
        """Deliver a notice to each follower of ``topic`` as their own (inbox, replay, fallbacks).

        Followers are delivered to ``max_batch`` at a time, each batch one transaction (and, with
        ``idempotency_key``, once per key and batch). Returns the receipts and whether an
        earlier publish under the key had stored them.
        """
        followers = self.followers(topic)
        receipts: list[Receipt] = []
        replayed = False
        size = self.settings.max_batch
        for index, start in enumerate(range(0, len(followers), size)):
            key = None if idempotency_key is None else f"{idempotency_key}#{index}"
            items = [(user_id, data, options) for user_id in followers[start : start + size]]
            done, again = self.deliver(items, idempotency_key=key)
            receipts += done
            replayed = replayed or again
        return receipts, replayed

    # -- contacts (#15) --------------------------------------------------------

    def contacts(self, user_id: str) -> dict[str, str]:
        """What ``PUT /users/<id>/contacts`` stored for ``user_id`` (``{"email": ...}``, or ``{}``)."""
        checked_user_id(user_id)
        found = self._store(lambda: self.broker.user_records(CONTACTS, user_id))
        return {name: found[name] for name in CONTACT_FIELDS if name in found}

    def set_contacts(self, user_id: str, body: object) -> dict[str, str]:
        """Replace ``user_id``'s contacts (a field missing or ``null`` is removed); what is stored now.

        :raises InvalidField: for a field that is not a contact, or a malformed address.
        """
        checked_user_id(user_id)
        for name, value in checked_contacts(body).items():
            self._store(lambda: self.broker.set_user_record(CONTACTS, user_id, name, value))  # noqa: B023
        return self.contacts(user_id)

    #: Seconds between two test emails of one user (per process).
    TEST_EMAIL_EVERY = 60

    def send_test_email(self, user_id: str) -> str:
        """Send ``user_id`` a test email now, through the configured SMTP server; the address it went to.

        :raises NoticeNotFound: if email is off.
        :raises Conflict: if the user has no address.
        :raises RateLimited: within a minute of the last one (in this process).
        :raises ChannelFailed: if the SMTP server did not take it (the reason says why).
        """
        checked_user_id(user_id)
        channel = self.fallbacks.channels.get("email") if self.fallbacks is not None else None
        if channel is None:
            raise NoticeNotFound("email is not set up on this server (SSE_NOTIFY_SMTP_URL)")
        email = t.cast(EmailChannel, channel)
        now = time.time()
        last = self._test_emails.get(user_id, 0.0)
        if now - last < self.TEST_EMAIL_EVERY:
            wait = math.ceil(self.TEST_EMAIL_EVERY - (now - last))
            raise RateLimited(f"one test email a minute: try again in {wait} s", wait)
        to = self._store(lambda: email.address(user_id))
        if not to:
            raise Conflict(f"{user_id} has no email address: set one with PUT /users/{user_id}/contacts")
        self._test_emails[user_id] = now
        data = {
            "title": "Test email from sse_notify",
            "text": "Email works: unread notices will reach you here.",
        }
        notice = Notice(0, user_id, utc_iso(datetime.now(timezone.utc)), dumps(data))
        try:
            email.send(Message(user_id, [notice], f"test:{user_id}:{now}", 0))
        except SendFailed as exc:
            raise ChannelFailed(f"the SMTP server did not take it: {exc}") from exc
        return to

    # -- Web Push subscriptions (#15) ---------------------------------------------

    def _push(self) -> PushChannel:
        channel = self.fallbacks.channels.get("push") if self.fallbacks is not None else None
        if channel is None:
            raise NoticeNotFound("Web Push is not set up on this server (SSE_NOTIFY_PUSH)")
        return t.cast(PushChannel, channel)

    def push_public_key(self) -> str:
        """The VAPID public key pages subscribe with (``applicationServerKey``).

        :raises NoticeNotFound: if Web Push is off.
        """
        return public_key(self._push().key)

    def add_push_subscription(self, user_id: str, body: object) -> tuple[str, bool]:
        """Keep a browser's push subscription of ``user_id``: its endpoint, and whether it is new.

        A user keeps at most ``MAX_SUBSCRIPTIONS``; a new one beyond it replaces the oldest.

        :raises InvalidField: for a body that is not a ``PushSubscription`` as browsers give it.
        :raises NoticeNotFound: if Web Push is off.
        """
        checked_user_id(user_id)
        self._push()
        subscription = checked_subscription(body, allow_http=not self.settings.production)
        endpoint = subscription["endpoint"]
        kept = self._store(lambda: self.broker.user_records(PUSH, user_id))
        if endpoint not in kept and len(kept) >= MAX_SUBSCRIPTIONS:
            oldest = min(kept, key=lambda e: orjson.loads(kept[e]).get("added", 0))
            self._store(lambda: self.broker.set_user_record(PUSH, user_id, oldest, None))
        text = dumps({**subscription, "added": time.time()})
        existed = self._store(lambda: self.broker.set_user_record(PUSH, user_id, endpoint, text))
        return endpoint, not existed

    def remove_push_subscription(self, user_id: str, endpoint: str) -> bool:
        """Forget one push subscription of ``user_id``; whether there was one."""
        checked_user_id(user_id)
        return bool(self._store(lambda: self.broker.set_user_record(PUSH, user_id, endpoint, None)))

    # -- preferences ----------------------------------------------------------

    def preference(self, user_id: str) -> Preferences:
        """``user_id``'s preferences (the defaults if they set none)."""
        return self.preferences_many([user_id]).get(user_id, DEFAULT_PREFERENCES)

    def preferences_many(self, user_ids: t.Sequence[str]) -> dict[str, Preferences]:
        """The preferences of those of ``user_ids`` who set some (one store query)."""
        try:
            texts = self.broker.preferences(list(dict.fromkeys(user_ids)))
        except BrokerError as exc:
            telemetry.store_failed("preferences", exc)
            raise
        return {user_id: Preferences.from_json(text) for user_id, text in texts.items()}

    def set_preferences(self, user_id: str, preferences: Preferences | t.Mapping[str, t.Any]) -> Preferences:
        """Replace ``user_id``'s preferences; every open stream of theirs gets a ``preferences`` event.

        :param preferences: a :class:`Preferences`, or a body as ``PUT /users/<id>/preferences``
            takes it (checked).
        :raises ~sse_notify.errors.InvalidOption: naming the field that is wrong.
        """
        checked_user_id(user_id)
        if not isinstance(preferences, Preferences):
            preferences = Preferences.checked(dict(preferences))
        try:
            self.broker.set_preferences(user_id, preferences.to_json())
        except BrokerError as exc:
            telemetry.store_failed("preferences", exc)
            raise
        self.broker.publish_control(Control(Kind.PREFERENCES, user_id, preferences.to_dict()))
        return preferences

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
