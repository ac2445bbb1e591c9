"""The Flask extension: ``SSENotify(app)`` or ``SSENotify().init_app(app)``."""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass

from flask import Flask, current_app

from .brokers import Broker, make_broker
from .config import Settings
from .errors import InvalidNotice
from .hub import Hub
from .notices import Notice, dumps, is_valid_user_id

__all__ = ["SSENotify", "State", "broadcast", "get_state", "notify", "notify_many"]

EXTENSION_KEY = "sse_notify"


@dataclass
class State:
    """What one app's sse_notify holds: ``app.extensions["sse_notify"]``."""

    settings: Settings
    broker: Broker
    hub: Hub

    def publish_many(self, items: t.Sequence[tuple[str | None, t.Any]]) -> list[Notice]:
        """Check, store and announce notices (``user_id=None``: broadcast).

        :raises InvalidNotice: for a bad user id or data that is not a JSON object;
            then nothing is stored.
        """
        if len(items) > self.settings.max_batch:
            raise InvalidNotice(f"at most {self.settings.max_batch} notices per batch, got {len(items)}")
        checked: list[tuple[str | None, str]] = []
        for index, (user_id, data) in enumerate(items):
            where = f"notice {index}: " if len(items) > 1 else ""
            if user_id is not None and not is_valid_user_id(user_id):
                raise InvalidNotice(
                    f"{where}user_id must be 1-128 characters of A-Z a-z 0-9 _ . @ : + -, got {user_id!r}"
                )
            if not isinstance(data, dict):
                raise InvalidNotice(f"{where}data must be a JSON object, got {type(data).__name__}")
            try:
                checked.append((user_id, dumps(data)))
            except (TypeError, ValueError) as exc:
                raise InvalidNotice(f"{where}data is not JSON-serializable: {exc}") from exc
        return self.broker.publish_many(checked)


class SSENotify:
    """Mounts the notification endpoints into a Flask app and owns the store.

    :param url_prefix: where the endpoints live (``""``: at the root).
    """

    def __init__(self, app: Flask | None = None, *, url_prefix: str = "") -> None:
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate settings, build the store and the hub, register the blueprint and CLI."""
        from .cli import register_commands
        from .views import bp

        settings = Settings.from_config(app.config)
        os.makedirs(app.instance_path, exist_ok=True)
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
        )
        hub.install_shutdown_signal()
        app.extensions[EXTENSION_KEY] = State(settings, broker, hub)
        app.register_blueprint(bp, url_prefix=self.url_prefix or None)
        register_commands(app)


def get_state(app: Flask | None = None) -> State:
    """The sse_notify state of ``app`` (default: the current app)."""
    app = app or current_app
    try:
        state: State = app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError("sse_notify is not set up on this app: call SSENotify(app) first") from None
    return state


def notify(user_id: str, data: dict[str, t.Any], *, app: Flask | None = None) -> Notice:
    """Store a notice for ``user_id`` and deliver it to every open stream of theirs."""
    return get_state(app).publish_many([(user_id, data)])[0]


def broadcast(data: dict[str, t.Any], *, app: Flask | None = None) -> Notice:
    """Store a notice for every user and deliver it to every open stream."""
    return get_state(app).publish_many([(None, data)])[0]


def notify_many(
    items: t.Sequence[tuple[str | None, dict[str, t.Any]]], *, app: Flask | None = None
) -> list[Notice]:
    """Store several notices in one transaction (all or none), then deliver them."""
    return get_state(app).publish_many(items)
