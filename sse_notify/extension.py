"""The Flask extension: ``SSENotify(app)`` or ``SSENotify().init_app(app)``, and the module functions.

``init_app`` builds the app's :class:`~sse_notify.service.State` (the store, the hub and
its node, the auth) and mounts the blueprint and the CLI commands. It changes nothing
process-wide: logging is configured only when ``SSE_NOTIFY_LOG_FORMAT`` asks for it, and
signals are left to ``sse_notify.gunicorn_conf`` (see ``shutdown.py``).
"""

from __future__ import annotations

import os
import time
import typing as t
from importlib.metadata import version

from flask import Flask, Response, render_template

from . import logs
from .auth import checked_ttl
from .brokers import make_broker
from .channels import ContactsHook
from .channels import build as build_fallbacks
from .cli import register_commands
from .config import Settings
from .delivery import DEFAULT_PREFERENCES, Delivery, Preferences, Receipt, checked_options
from .handoff import capture_start_response
from .hub import Hub
from .node import Node
from .presence import Presence
from .security import AuthorizeHook, Security, TopicHook, announce
from .service import EXTENSION_KEY, State, get_state
from .views import bp

if t.TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "SSENotify",
    "State",
    "broadcast",
    "follow_topic",
    "get_state",
    "issue_token",
    "kick",
    "notify",
    "notify_followers",
    "notify_many",
    "notify_topic",
    "presence",
    "set_token_cookie",
]


class SSENotify:
    """Mounts the notification endpoints into a Flask app and owns the store.

    :param url_prefix: where the endpoints live, e.g. ``"/notify"`` (default:
        ``SSE_NOTIFY_URL_PREFIX``, else ``""``: at the root).
    :param authorize: optional ``authorize(user_id) -> bool | None`` deciding who may
        open a stream with the host app's own login (``None`` falls back to tokens).
    :param authorize_topic: optional ``authorize_topic(user_id, topic) -> bool | None``
        deciding which topics a user's stream may follow (``?topics=``; ``None`` falls back
        to the topics the token grants).
    :param contacts: optional ``contacts(user_id) -> {"email": ...} | None``: where the host app
        keeps its users' addresses (``None`` falls back to ``PUT /users/<id>/contacts``).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        authorize: AuthorizeHook | None = None,
        contacts: ContactsHook | None = None,
        authorize_topic: TopicHook | None = None,
    ) -> None:
        self.url_prefix = url_prefix
        self._authorize = authorize
        self._authorize_topic = authorize_topic
        self._contacts = contacts
        if app is not None:
            self.init_app(app)

    def authorize(self, func: AuthorizeHook) -> AuthorizeHook:
        """Decorator form of the ``authorize`` argument (set it before ``init_app``)."""
        self._authorize = func
        return func

    def authorize_topic(self, func: TopicHook) -> TopicHook:
        """Decorator form of the ``authorize_topic`` argument (set it before ``init_app``)."""
        self._authorize_topic = func
        return func

    def contacts(self, func: ContactsHook) -> ContactsHook:
        """Decorator form of the ``contacts`` argument (set it before ``init_app``)."""
        self._contacts = func
        return func

    def init_app(self, app: Flask) -> None:
        """Validate settings, build the store, hub and auth, register the blueprint and CLI."""
        settings = Settings.from_config(app.config)
        prefix = settings.url_prefix if self.url_prefix is None else self.url_prefix.rstrip("/")
        os.makedirs(app.instance_path, exist_ok=True)
        security = Security.from_settings(settings, app.config.get("SECRET_KEY"), app.instance_path)
        security.authorize = self._authorize
        security.authorize_topic = self._authorize_topic
        broker = make_broker(
            settings.broker_url,
            base_dir=app.instance_path,
            retention_count=settings.retention_count,
            retention_age=settings.retention_age,
            poll_interval=settings.poll_interval,
        )
        hub = Hub(
            max_pending=settings.max_pending,
            retry=settings.retry,
            reconnect_rate=settings.reconnect_rate,
            max_streams=settings.max_streams,
            max_streams_per_user=settings.max_streams_per_user,
        )
        node = Node(
            broker,
            hub,
            heartbeat=settings.heartbeat,
            send_timeout=settings.send_timeout,
            sweep_interval=settings.sweep_interval,
            presence_interval=settings.presence_interval,
        )
        app.extensions[EXTENSION_KEY] = State(
            settings, broker, hub, node, security, prefix, self._fallbacks(app, settings, broker)
        )
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
        if settings.log_format:
            logs.configure(settings.log_format, settings.log_level)
        register_commands(app)
        announce(security, app.instance_path)

    def _fallbacks(self, app: Flask, settings: Settings, broker: t.Any) -> t.Any:
        """Email, push and webhook, where the settings turn them on (``channels/``)."""

        def render(name: str, context: t.Mapping[str, t.Any]) -> str:
            with app.app_context():
                return render_template(name, **context)

        def preferences(user_id: str) -> Preferences:
            text = broker.preferences([user_id]).get(user_id)
            return Preferences.from_json(text) if text else DEFAULT_PREFERENCES

        hook = self._contacts

        def contacts(user_id: str) -> t.Mapping[str, str] | None:
            assert hook is not None
            with app.app_context():  # (the host's hook may use its database session)
                return hook(user_id)

        agent = f"sse-notify/{version('sse-notify')}"
        return build_fallbacks(
            settings, broker, preferences, render, contacts if hook else None, agent, app.instance_path
        )


def notify(
    user_id: str, data: dict[str, t.Any], *, app: Flask | None = None, **options: Unpack[Delivery]
) -> Receipt:
    """Deliver a notice to ``user_id``'s open streams and inbox, or schedule, hold or suppress it.

    :param options: ``category``, ``critical``, ``send_at`` (an aware ``datetime`` or RFC 3339
        text) or ``delay`` (seconds), ``group``; and ``idempotency_key`` (e.g. a job id: a
        retried call with the same key and data stores nothing new and returns the first notice).
    :returns: what happened (:class:`~sse_notify.delivery.Receipt`: ``status``, ``id``...).
    """
    return get_state(app).notify(user_id, data, **options)


def broadcast(data: dict[str, t.Any], *, app: Flask | None = None, **options: Unpack[Delivery]) -> Receipt:
    """Deliver a notice to every user (each stream honours its user's mutes), or schedule it."""
    return get_state(app).broadcast(data, **options)


def notify_many(
    items: t.Sequence[tuple[str | None, dict[str, t.Any]]],
    *,
    app: Flask | None = None,
    **options: Unpack[Delivery],
) -> list[Receipt]:
    """Deliver several notices with the same options; those delivered now are one transaction."""
    return get_state(app).notify_many(items, **options)


def issue_token(
    user_id: str, ttl: float | None = None, *, topics: t.Sequence[str] = (), app: Flask | None = None
) -> str:
    """A connection token that opens ``user_id``'s stream for ``ttl`` seconds (and may follow ``topics``)."""
    return get_state(app).issue_token(user_id, ttl, topics)


def notify_followers(
    topic: str, data: dict[str, t.Any], *, app: Flask | None = None, **options: Unpack[Delivery]
) -> list[Receipt]:
    """Deliver a notice to each follower of ``topic`` as their own: inbox, replay, fallbacks."""
    state = get_state(app)
    key = options.pop("idempotency_key", None)
    checked = checked_options(options, now=time.time())
    return state.notify_followers(topic, data, checked, idempotency_key=key)[0]


def follow_topic(topic: str, user_id: str, *, follows: bool = True, app: Flask | None = None) -> bool:
    """Make ``user_id`` a follower of ``topic`` (``follows=False``: no longer); whether they were one."""
    return get_state(app).set_follower(topic, user_id, follows)


def notify_topic(
    topic: str, data: dict[str, t.Any], *, app: Flask | None = None, **options: Unpack[Delivery]
) -> Receipt:
    """Deliver a notice to every open stream following ``topic`` (``?topics=``), on every worker and host."""
    return get_state(app).notify_topic(topic, data, **options)


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
    lifetime = state.security.token_ttl if ttl is None else checked_ttl(ttl)
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
