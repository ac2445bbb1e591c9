"""Web Push (RFC 8030, 8291, 8292) with pywebpush: one push per device of the user, with a count.

A user's devices are the subscriptions their pages registered (``POST
/users/<id>/push-subscriptions``), kept as the store's records of kind :data:`PUSH`. A message
goes to each:

- ``TTL`` (``SSE_NOTIFY_PUSH_TTL``, a day by default) > 0, so a phone that is off gets it later;
- ``Urgency: high`` when a notice in it is critical, else ``normal``;
- ``Topic: notices``, so a newer message replaces one the push service still holds;
- a payload of at most :data:`MAX_PAYLOAD` bytes: the count, the newest notice's id, title and
  link, the ids (the service worker fetches the rest if it needs it).

A subscription the push service answers ``404`` or ``410`` for is deleted (the browser dropped
it). ``429``, a ``5xx`` or no answer is tried again later, for the devices that did not get it
only; another ``4xx`` (a bad key, a payload too large) gives that device up.

The VAPID key is a PEM file (``SSE_NOTIFY_VAPID_PRIVATE_KEY``). In development, with none set,
one is made in the instance folder (:func:`vapid_key`); in production it is required.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import typing as t
from pathlib import Path

import orjson

from ..errors import ConfigError, InvalidField
from ..fallback import Message, RecordStore, SendFailed

if t.TYPE_CHECKING:
    from py_vapid import Vapid01

__all__ = [
    "MAX_PAYLOAD",
    "MAX_SUBSCRIPTIONS",
    "PUSH",
    "PushChannel",
    "checked_subscription",
    "public_key",
    "vapid_key",
]

log = logging.getLogger("sse_notify.fallback")

#: The store's record kind for push subscriptions (one record per endpoint).
PUSH = "push"
#: The largest payload sent (the protocol's limit is 4096 bytes, less the encryption's overhead).
MAX_PAYLOAD = 3072
#: Subscriptions kept per user; a new one beyond it replaces the oldest.
MAX_SUBSCRIPTIONS = 10
#: What ``Topic`` a message carries: a newer one replaces an older one still held.
TOPIC = "notices"
_LIMIT_TEXT = 200


def vapid_key(setting: str, instance_path: str) -> Vapid01:
    """The VAPID key: the PEM file ``setting`` names, or (``""``) one kept in the instance folder.

    :raises ConfigError: if the file cannot be read as a VAPID private key.
    """
    try:
        from py_vapid import Vapid
        from pywebpush import webpush  # noqa: F401 (sending needs it: say so at start, not at the first push)
    except ImportError as exc:
        raise ConfigError(f'SSE_NOTIFY_PUSH needs pywebpush: pip install "sse-notify[push]" ({exc})') from exc

    path = Path(setting) if setting else Path(instance_path) / "vapid_private_key.pem"
    if not setting and not path.exists():
        key = Vapid()
        key.generate_keys()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        key.save_key(str(temporary))
        os.chmod(temporary, 0o600)
        try:  # create it only if absent: workers starting at once all read the one that won
            os.link(temporary, path)
        except FileExistsError:
            made = False
        else:
            made = True
        finally:
            os.unlink(temporary)
        if made:
            log.warning(
                "made a VAPID key for Web Push in %s (development only: set SSE_NOTIFY_VAPID_PRIVATE_KEY)",
                path,
            )
    try:
        return Vapid.from_file(str(path))
    except Exception as exc:  # py_vapid raises several kinds for a bad file
        raise ConfigError(
            f"SSE_NOTIFY_VAPID_PRIVATE_KEY: cannot read a VAPID private key from {path}: {exc}"
        ) from exc


def public_key(key: Vapid01) -> str:
    """The application server key a page subscribes with: the raw public point, URL-safe base64."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: object, length: int, name: str) -> bytes:
    if not isinstance(text, str) or not text.replace("-", "").replace("_", "").rstrip("=").isalnum():
        raise InvalidField(f"{name}: URL-safe base64 text, got {text!r}", name)
    raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    if len(raw) != length:
        raise InvalidField(f"{name}: {length} bytes, got {len(raw)}", name)
    return raw


def checked_subscription(body: object, *, allow_http: bool) -> dict[str, t.Any]:
    """A ``PushSubscription.toJSON()`` body, checked: ``{"endpoint", "keys": {"p256dh", "auth"}}``.

    :param allow_http: whether an ``http://`` endpoint is accepted (never in production: the
        server POSTs to it, so it must be a push service's ``https://`` URL).
    :raises InvalidField: naming the field that is wrong.
    """
    if not isinstance(body, dict):
        raise InvalidField(f"a push subscription is a JSON object, got {type(body).__name__}", "subscription")
    endpoint = body.get("endpoint")
    schemes = ("https://", "http://") if allow_http else ("https://",)
    if not isinstance(endpoint, str) or not endpoint.startswith(schemes) or len(endpoint) > 1024:
        raise InvalidField(
            f"endpoint: the push service's {' or '.join(schemes)} URL, got {endpoint!r}", "endpoint"
        )
    keys = body.get("keys")
    if not isinstance(keys, dict):
        raise InvalidField('keys: {"p256dh": ..., "auth": ...} as the browser gives them', "keys")
    point = _unb64url(keys.get("p256dh"), 65, "keys.p256dh")
    if point[0] != 4:
        raise InvalidField("keys.p256dh: an uncompressed P-256 point", "keys.p256dh")
    _unb64url(keys.get("auth"), 16, "keys.auth")
    return {"endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}


def payload(message: Message) -> bytes:
    """What the service worker gets: ``{"count", "id", "title", "text", "url", "ids", "user_id"}``, small."""
    newest = message.notices[-1].to_dict()
    data = newest.get("data") or {}

    def text(name: str) -> str | None:
        value = data.get(name)
        return value[:_LIMIT_TEXT] if isinstance(value, str) else None

    body: dict[str, t.Any] = {
        "user_id": message.user_id,
        "count": len(message.notices),
        "id": newest["id"],
        "title": text("title"),
        "text": text("text") or text("body"),
        "url": text("url"),
        "ids": [notice.id for notice in message.notices],
    }
    encoded = orjson.dumps(body)
    while len(encoded) > MAX_PAYLOAD and body["ids"]:  # (a long digest: the newest ids are kept)
        body["ids"] = body["ids"][len(body["ids"]) // 2 + 1 :]
        encoded = orjson.dumps(body)
    return encoded


class PushChannel:
    """A message to each push subscription of the user."""

    name = "push"

    def __init__(
        self,
        key: Vapid01,
        subject: str,
        ttl: int,
        timeout: float,
        records: RecordStore,
    ) -> None:
        self.key = key
        self.subject = subject
        self.ttl = ttl
        self.timeout = timeout
        #: The store (``user_records``, ``set_user_record``).
        self.records = records

    def subscriptions(self, user_id: str) -> dict[str, dict[str, t.Any]]:
        """The user's subscriptions, by endpoint."""
        return {
            endpoint: orjson.loads(text)
            for endpoint, text in self.records.user_records(PUSH, user_id).items()
        }

    def reachable(self, user_id: str) -> bool:
        """Whether the user has a push subscription."""
        return bool(self.records.user_records(PUSH, user_id))

    def send(self, message: Message) -> None:
        """Push the message to every device that has not had it yet."""
        from pywebpush import WebPushException, webpush

        subscriptions = self.subscriptions(message.user_id)
        targets = message.state.get("endpoints") or list(subscriptions)
        data = payload(message).decode()
        urgent = any(notice.meta.get("critical") for notice in message.notices)
        headers = {"Urgency": "high" if urgent else "normal", "Topic": TOPIC}
        again: list[str] = []
        reasons: list[str] = []
        sent = 0
        for endpoint in targets:
            subscription = subscriptions.get(endpoint)
            if subscription is None:
                continue  # unsubscribed since the last try
            try:
                webpush(
                    subscription,
                    data=data,
                    vapid_private_key=self.key,
                    vapid_claims={"sub": self.subject, "exp": int(time.time()) + 12 * 3600},
                    ttl=self.ttl,
                    timeout=self.timeout,
                    headers=dict(headers),
                )
                sent += 1
            except WebPushException as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status in (404, 410):
                    self.records.set_user_record(PUSH, message.user_id, endpoint, None)
                    log.info("push subscription of %s is gone (%s): deleted", message.user_id, status)
                elif status is None or status == 429 or status >= 500:
                    again.append(endpoint)
                    reasons.append(f"{status or 'no answer'}")
                else:
                    log.warning("push to a device of %s refused for good: %s", message.user_id, status)
            except OSError as exc:  # (requests' errors are OSErrors: refused, timed out, cut)
                again.append(endpoint)
                reasons.append(str(exc) or type(exc).__name__)
        if again:
            raise SendFailed(
                f"push to {len(again)} device(s) failed: {', '.join(reasons)}", state={"endpoints": again}
            )
        if not sent:
            raise SendFailed("no device of the user took it", permanent=True)
