"""A push service on loopback that speaks the Web Push protocol, standing in for browsers' push services.

Browsers' push services (FCM, Mozilla's autopush, Apple's) are not reachable from this machine, so
the tests send to this one instead. It does what they do with a message:

- RFC 8030: ``POST`` to a subscription's endpoint with a ``TTL`` header; ``Urgency`` (``very-low``,
  ``low``, ``normal``, ``high``) and ``Topic`` (at most 32 characters of the URL-safe base64
  alphabet) checked when given; ``201`` with a ``Location``; ``404``/``410`` for a subscription
  that is gone;
- RFC 8292 (VAPID): ``Authorization: vapid t=<JWT>, k=<public key>``. The JWT must be ES256,
  signed by ``k``, with ``aud`` the endpoint's origin, ``exp`` in the future and at most 24 hours
  away, and ``sub`` a ``mailto:`` or ``https:`` URL; ``k`` must be the application server key the
  subscription was made with (``403`` otherwise, as the real services answer);
- RFC 8291 (message encryption, ``Content-Encoding: aes128gcm``): the body is decrypted with the
  subscription's private key and auth secret (``http_ece``), as the browser would, and must be
  at most 4096 bytes (``413`` above).

A subscription is made as a browser's ``PushManager.subscribe`` makes one: a P-256 key pair and a
16-byte auth secret, of which the endpoint and the public parts go to the application server.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import typing as t
from dataclasses import dataclass

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .receivers import PostReceiver
from .support import wait_for

_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_URGENCY = ("very-low", "low", "normal", "high")


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of URL-safe base64, padded or not."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """One browser's subscription: what the browser keeps, and what it gives the app server."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    #: The app server's VAPID public key (raw, 65 bytes) the subscription was made with.
    server_key: bytes

    def info(self) -> dict[str, t.Any]:
        """``PushSubscription.toJSON()``: what the page sends to the app server."""
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)},
        }


@dataclass
class Push:
    """A message the push service accepted, decrypted."""

    subscription: str
    ttl: int
    urgency: str | None
    topic: str | None
    payload: dict[str, t.Any]
    claims: dict[str, t.Any]


class PushService(PostReceiver):
    """The stand-in push service (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushes: list[Push] = []
        #: Every refused request: (status, why).
        self.refused: list[tuple[int, str]] = []
        self.subscriptions: dict[str, Subscription] = {}
        #: Subscriptions that answer 410 Gone (unsubscribed in the browser).
        self.gone: set[str] = set()
        #: Statuses to answer the next good requests with instead of 201 (e.g. 503).
        self.answers: list[int] = []

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: the ``aud`` a VAPID JWT for it must carry."""
        return f"http://127.0.0.1:{self.port}"

    def subscribe(self, server_key: str) -> Subscription:
        """A new subscription for an app whose VAPID public key is ``server_key`` (URL-safe base64)."""
        sub_id = secrets.token_urlsafe(12)
        sub = Subscription(
            sub_id,
            f"{self.origin}/push/{sub_id}",
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
            unb64url(server_key),
        )
        self.subscriptions[sub_id] = sub
        return sub

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """201 with a ``Location`` for a good message; the status and why for another."""
        status, why = self.receive(path, headers, body)
        if status >= 300:
            self.refused.append((status, why))
            return status, {}, why.encode()
        return status, {"Location": f"{self.origin}/message/{secrets.token_urlsafe(8)}"}, b""

    def wait(self, count: int, timeout: float = 20) -> list[Push]:
        """The first ``count`` accepted messages, once that many arrived."""
        what = f"{count} push message(s) (got {len(self.pushes)}; refused {self.refused})"
        wait_for(lambda: len(self.pushes) >= count, timeout, what)
        return self.pushes[:count]

    # -- the protocol ----------------------------------------------------------------

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """Check and decrypt one message: ``(status, why)``."""
        match = re.fullmatch(r"/push/([A-Za-z0-9_-]+)", path)
        if match is None or match[1] not in self.subscriptions:
            return 404, "no such subscription"
        sub = self.subscriptions[match[1]]
        if sub.id in self.gone:
            return 410, "unsubscribed"
        ttl = headers.get("ttl", "")
        if not ttl.isdigit():
            return 400, f"TTL header missing or not a number: {ttl!r}"
        urgency, topic = headers.get("urgency"), headers.get("topic")
        if urgency is not None and urgency not in _URGENCY:
            return 400, f"bad Urgency {urgency!r}"
        if topic is not None and not _TOPIC.fullmatch(topic):
            return 400, f"bad Topic {topic!r}"
        try:
            claims = self._vapid(headers.get("authorization", ""), sub)
        except ValueError as exc:
            return 403 if "key" in str(exc) else 401, f"VAPID: {exc}"
        if headers.get("content-encoding") != "aes128gcm":
            return 415, f"Content-Encoding must be aes128gcm, got {headers.get('content-encoding')!r}"
        if len(body) > 4096:
            return 413, f"payload of {len(body)} bytes"
        try:
            plain = http_ece.decrypt(
                body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
        except Exception as exc:
            return 400, f"cannot decrypt: {exc!r}"
        if self.answers:
            return self.answers.pop(0), "answered by the test"
        self.pushes.append(Push(sub.id, int(ttl), urgency, topic, json.loads(plain), claims))
        return 201, ""

    def _vapid(self, authorization: str, sub: Subscription) -> dict[str, t.Any]:
        """The JWT's claims, once it is checked (RFC 8292)."""
        match = re.fullmatch(r"vapid t=([A-Za-z0-9_.-]+), ?k=([A-Za-z0-9_-]+)", authorization.strip())
        if match is None:
            raise ValueError(f"Authorization is not 'vapid t=..., k=...': {authorization!r}")
        token, key = match[1], unb64url(match[2])
        if key != sub.server_key:
            raise ValueError("the key is not the one the subscription was made with")
        head_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(unb64url(head_b64))
        if header.get("alg") != "ES256":
            raise ValueError(f"alg must be ES256, got {header}")
        signature = unb64url(signature_b64)
        if len(signature) != 64:
            raise ValueError("an ES256 signature is 64 bytes (r || s)")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("the JWT signature does not verify") from None
        claims = json.loads(unb64url(claims_b64))
        if claims.get("aud") != self.origin:
            raise ValueError(f"aud must be {self.origin}, got {claims.get('aud')!r}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or not time.time() < exp <= time.time() + 86400:
            raise ValueError(f"exp must be in the next 24 hours, got {exp!r}")
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            raise ValueError(f"sub must be a mailto: or https: URL, got {claims.get('sub')!r}")
        return t.cast(dict[str, t.Any], claims)
