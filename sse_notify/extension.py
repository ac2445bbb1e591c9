"""The Flask extension: ``SSENotify(app)`` or ``SSENotify().init_app(app)``."""

from __future__ import annotations

import hashlib
import os
import time
import typing as t
from dataclasses import dataclass

from flask import Flask, Response, current_app

from . import logs, redact, telemetry
from .brokers import Broker, make_broker
from .brokers.base import Published
from .config import Settings
from .errors import BrokerError, InvalidNotice
from .handoff import capture_start_response
from .hub import KICK, Hub
from .inbox import STATE_KEY, InboxPage, StateChange, change, list_page, read_all
from .notices import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_RULE, Notice, dumps, is_valid_user_id
from .presence import Presence
from .security import AuthorizeHook, Security, announce

__all__ = [
    "SSENotify",
    "State",
    "broadcast",
    "get_state",
    "issue_token",
    "kick",
    "notify",
    "notify_many",
    "presence",
    "set_token_cookie",
]

T = t.TypeVar("T")

EXTENSION_KEY = "sse_notify"
USER_ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . @ : + -"


@dataclass
class State:
    """What one app's sse_notify holds: ``app.extensions["sse_notify"]``."""

    settings: Settings
    broker: Broker
    hub: Hub
    security: Security
    url_prefix: str = ""

    def publish_many(
        self, items: t.Sequence[tuple[str | None, t.Any]], *, idempotency_key: str | None = None
    ) -> list[Notice]:
        """Check, store and announce notices (``user_id=None``: broadcast).

        :param idempotency_key: store these notices once: the same key with the
            same notices within ``SSE_NOTIFY_IDEMPOTENCY_TTL`` returns the notices
            stored the first time (see :meth:`publish_once`).
        :raises InvalidNotice: for a bad user id or data that is not a JSON object;
            then nothing is stored.
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
        :raises InvalidNotice: also for a key that is not 1-200 printable ASCII characters.
        """
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise InvalidNotice(f"Idempotency-Key must be {IDEMPOTENCY_KEY_RULE}")
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
        for index, (user_id, data) in enumerate(items):
            where = f"notice {index}: " if len(items) > 1 else ""
            if user_id is not None and not is_valid_user_id(user_id):
                raise InvalidNotice(f"{where}user_id must be {USER_ID_RULE}, got {user_id!r}")
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
            if size > self.settings.max_body:
                raise PayloadTooLarge(f"{where}data is larger than {self.settings.max_body} bytes")
            checked.append((user_id, text))
        return checked

    def notify(self, user_id: str, data: dict[str, t.Any], *, idempotency_key: str | None = None) -> Notice:
        """Store a notice for ``user_id`` and deliver it to every open stream of theirs."""
        return self.publish_many([(user_id, data)], idempotency_key=idempotency_key)[0]

    def broadcast(self, data: dict[str, t.Any], *, idempotency_key: str | None = None) -> Notice:
        """Store a notice for every user and deliver it to every open stream."""
        return self.publish_many([(None, data)], idempotency_key=idempotency_key)[0]

    def issue_token(self, user_id: str, ttl: float | None = None) -> str:
        """A connection token that opens ``user_id``'s stream for ``ttl`` seconds (default: the setting)."""
        return self.security.issue(_checked_user(user_id), ttl)

    def kick(self, user_id: str) -> None:
        """Close every open stream of ``user_id``, on every worker (through the store's feed)."""
        self.broker.publish(KICK, dumps({"user_id": _checked_user(user_id)}))

    # -- presence -----------------------------------------------------------

    def presence(self, user_id: str) -> Presence:
        """Whether ``user_id`` has a stream open on any worker or host, and how many."""
        return self.presence_many([user_id])[user_id]

    def presence_many(self, user_ids: t.Sequence[str]) -> dict[str, Presence]:
        """:meth:`presence` of several users in one store query (at most 1000)."""
        if len(user_ids) > 1000:
            raise InvalidNotice(f"at most 1000 users per presence query, got {len(user_ids)}")
        for user_id in user_ids:
            _checked_user(user_id)
        try:
            counts = self.hub.presence(user_ids)
        except BrokerError as exc:
            telemetry.store_failed("presence", exc)
            raise
        return {user_id: Presence(user_id, counts.get(user_id, 0)) for user_id in user_ids}

    # -- inboxes ------------------------------------------------------------

    def inbox(
        self,
        user_id: str,
        *,
        before: int | None = None,
        limit: int = 20,
        unread_only: bool = False,
        archived: bool = False,
    ) -> InboxPage:
        """A page of ``user_id``'s inbox, newest first, with the unread count."""
        return list_page(
            self.broker, user_id, before=before, limit=limit, unread_only=unread_only, archived=archived
        )

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> StateChange:
        """Mark notices read, unread, archived or not; every open stream of the user is told.

        :raises ~sse_notify.inbox.NoticeNotFound: if one is not in the user's inbox.
        """
        return self._announce(change(self.broker, user_id, ids, read=read, archived=archived))

    def mark_all_read(self, user_id: str) -> StateChange:
        """Mark everything in the inbox read; every open stream of the user is told."""
        return self._announce(read_all(self.broker, user_id))

    def _announce(self, state_change: StateChange) -> StateChange:
        # Through the store, like a notice, so streams on every worker and host get it.
        self.broker.publish(STATE_KEY, state_change.to_record())
        return state_change


def _checked_user(user_id: str) -> str:
    """``user_id``, if it is a valid one.

    :raises InvalidNotice: naming the rule, if not.
    """
    if not is_valid_user_id(user_id):
        raise InvalidNotice(f"user_id must be {USER_ID_RULE}, got {user_id!r}")
    return user_id


class PayloadTooLarge(InvalidNotice):
    """A notice's data is over the size limit (413)."""


class SSENotify:
    """Mounts the notification endpoints into a Flask app and owns the store.

    :param url_prefix: where the endpoints live, e.g. ``"/notify"`` (default:
        ``SSE_NOTIFY_URL_PREFIX``, else ``""``: at the root).
    :param authorize: optional ``authorize(user_id) -> bool | None`` deciding who may
        open a stream with the host app's own login (``None`` falls back to tokens).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        authorize: AuthorizeHook | None = None,
    ) -> None:
        self.url_prefix = url_prefix
        self._authorize = authorize
        if app is not None:
            self.init_app(app)

    def authorize(self, func: AuthorizeHook) -> AuthorizeHook:
        """Decorator form of the ``authorize`` argument (set it before ``init_app``)."""
        self._authorize = func
        return func

    def init_app(self, app: Flask) -> None:
        """Validate settings, build the store, hub and auth, register the blueprint and CLI."""
        from .cli import register_commands
        from .views import bp

        settings = Settings.from_config(app.config)
        prefix = settings.url_prefix if self.url_prefix is None else self.url_prefix.rstrip("/")
        os.makedirs(app.instance_path, exist_ok=True)
        security = Security.from_settings(settings, app.config.get("SECRET_KEY"), app.instance_path)
        security.authorize = self._authorize
        broker = make_broker(
            settings.broker_url,
            base_dir=app.instance_path,
            retention_count=settings.retention_count,
            retention_age=settings.retention_age,
            poll_interval=settings.poll_interval,
        )
        hub = Hub(
            broker,
            max_pending=settings.max_pending,
            send_timeout=settings.send_timeout,
            sweep_interval=settings.sweep_interval,
            retry=settings.retry,
            max_streams=settings.max_streams,
            max_streams_per_user=settings.max_streams_per_user,
            heartbeat=settings.heartbeat,
            presence_interval=settings.presence_interval,
        )
        hub.install_shutdown_signal()
        app.extensions[EXTENSION_KEY] = State(settings, broker, hub, security, prefix)
        app.register_blueprint(bp, url_prefix=prefix or None)
        if settings.detach_streams:
            app.wsgi_app = capture_start_response(app.wsgi_app)  # type: ignore[method-assign,assignment]
        if settings.cors_origins:
            from flask_cors import CORS

            CORS(
                app,
                resources={f"{prefix}/*": {"origins": list(settings.cors_origins)}},
                supports_credentials=True,
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                max_age=600,
            )
        redact.install()
        if settings.log_format:
            logs.configure(settings.log_format, settings.log_level)
        register_commands(app)
        announce(security, app.instance_path)


def get_state(app: Flask | None = None) -> State:
    """The sse_notify state of ``app`` (default: the current app)."""
    app = app or current_app
    try:
        state: State = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("sse_notify is not set up on this app: call SSENotify(app) first") from None
    return state


def notify(
    user_id: str, data: dict[str, t.Any], *, idempotency_key: str | None = None, app: Flask | None = None
) -> Notice:
    """Store a notice for ``user_id`` and deliver it to every open stream of theirs.

    :param idempotency_key: e.g. a job id: a retried call with the same key and
        data stores nothing new and returns the first notice.
    """
    return get_state(app).notify(user_id, data, idempotency_key=idempotency_key)


def broadcast(
    data: dict[str, t.Any], *, idempotency_key: str | None = None, app: Flask | None = None
) -> Notice:
    """Store a notice for every user and deliver it to every open stream."""
    return get_state(app).broadcast(data, idempotency_key=idempotency_key)


def notify_many(
    items: t.Sequence[tuple[str | None, dict[str, t.Any]]],
    *,
    idempotency_key: str | None = None,
    app: Flask | None = None,
) -> list[Notice]:
    """Store several notices in one transaction (all or none), then deliver them."""
    return get_state(app).publish_many(items, idempotency_key=idempotency_key)


def issue_token(user_id: str, ttl: float | None = None, *, app: Flask | None = None) -> str:
    """A connection token that opens ``user_id``'s stream for ``ttl`` seconds."""
    return get_state(app).issue_token(user_id, ttl)


def kick(user_id: str, *, app: Flask | None = None) -> None:
    """Close every open stream of ``user_id`` on every worker (e.g. after logout or a ban)."""
    get_state(app).kick(user_id)


def presence(user_id: str, *, app: Flask | None = None) -> Presence:
    """Whether ``user_id`` is online: their open streams on every worker and host.

    Another worker's streams count within ``SSE_NOTIFY_PRESENCE_INTERVAL``
    seconds of opening or closing; a killed worker's within ten intervals.
    """
    return get_state(app).presence(user_id)


def set_token_cookie(
    response: Response,
    user_id: str,
    ttl: float | None = None,
    *,
    secure: bool = True,
    samesite: str = "Lax",
    app: Flask | None = None,
) -> Response:
    """Put a connection token for ``user_id`` in an HttpOnly cookie (for a login endpoint).

    The cookie is scoped to the stream URLs, so it travels only with
    ``EventSource`` requests. ``secure=False`` only for plain-HTTP development.
    """
    state = get_state(app)
    lifetime = state.security.token_ttl if ttl is None else ttl
    response.set_cookie(
        state.security.cookie,
        issue_token(user_id, lifetime, app=app),
        max_age=int(lifetime),
        path=f"{state.url_prefix}/connection/",
        httponly=True,
        secure=secure,
        samesite=samesite,
    )
    return response
