"""Connection tokens and publish keys.

Connection tokens are signed with the app's secret by itsdangerous
(``URLSafeTimedSerializer``, salt ``sse-notify-stream``). A token names one user
and a lifetime; the signing time is in the signature, so the expiry cannot be
changed without the secret. Publish keys are plain shared secrets, compared in
constant time against every configured key (several at once, for rotation).

Checking a token is a fifth of opening a stream (py-spy, ``python -m bench limit``), so
the serializer is itsdangerous's with three things kept instead of made again on every
call: one signer per salt (itsdangerous builds one per ``loads``), its derived key
(a SHA-1 per call), and orjson for the payload; and hashlib's SHA-1 itself as the
digest, so that ``hmac`` runs in OpenSSL. The tokens are the same bytes. Checking one
that :func:`issue_token` made takes itsdangerous's steps without its layers (``_loads``),
and anything else goes to itsdangerous; ``tests/test_tokens.py`` compares the two on
valid, altered and foreign tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
import typing as t
from dataclasses import dataclass

import orjson
from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from .errors import Forbidden, InvalidRequest, InvalidToken, InvalidTopic, TokenExpired, Unauthenticated
from .notices import TOPIC_PATTERN, TOPIC_RULE

__all__ = [
    "MAX_TOKEN_TTL",
    "TOKEN_TTL_RULE",
    "Grant",
    "check_publish_key",
    "checked_ttl",
    "issue_token",
    "key_id",
    "verify_token",
]

SALT = "sse-notify-stream"

#: The longest a connection token may live, in seconds (30 days): over HTTP, the CLI and Python.
MAX_TOKEN_TTL = 30 * 86400


#: :data:`MAX_TOKEN_TTL` in words, for error messages.
TOKEN_TTL_RULE = f"more than 0 and at most {MAX_TOKEN_TTL} seconds (30 days)"


def checked_ttl(ttl: object) -> float:
    """``ttl``, if it is a lifetime a token may have (more than 0, at most :data:`MAX_TOKEN_TTL` seconds).

    :raises ~sse_notify.errors.InvalidRequest: naming the rule, if not.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_TOKEN_TTL:
        raise InvalidRequest(f"ttl must be {TOKEN_TTL_RULE}, got {ttl!r}")
    return ttl


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows: streaming ``user_id`` until ``expires_at`` (Unix time), and ``topics``."""

    user_id: str
    expires_at: float
    #: The topics the stream may follow: names, or prefixes ending in ``*`` (``*`` alone: any).
    topics: tuple[str, ...] = ()

    def allows(self, topic: str) -> bool:
        """Whether this grant lets its stream follow ``topic``."""
        return any(g == topic or (g.endswith("*") and topic.startswith(g[:-1])) for g in self.topics)


def checked_topic_grants(grants: t.Iterable[object]) -> tuple[str, ...]:
    """Topics a token may grant (names, or a prefix of one ending in ``*``), checked.

    :raises ~sse_notify.errors.InvalidTopic: naming the rule, for one that is neither.
    """
    checked = []
    for grant in grants:
        if not (
            isinstance(grant, str) and (grant == "*" or TOPIC_PATTERN.fullmatch(grant.removesuffix("*")))
        ):
            raise InvalidTopic(
                f"a topic grant must be {TOPIC_RULE}, optionally ending in *, got {grant!r}", grant
            )
        checked.append(grant)
    return tuple(dict.fromkeys(checked))


class _KeptKeySigner(TimestampSigner):
    """itsdangerous's signer, deriving each secret's key once instead of on every call."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        """The derived key of ``secret_key`` (as itsdangerous derives it), computed once."""
        key = self._keys.get(secret_key)
        if key is None:
            key = self._keys[secret_key] = super().derive_key(secret_key)
        return key


class _OrjsonPayload:
    """The token payload's JSON, through orjson (compact, as itsdangerous writes it)."""

    @staticmethod
    def loads(payload: str | bytes) -> t.Any:
        return orjson.loads(payload)

    @staticmethod
    def dumps(value: t.Any, **_: t.Any) -> str:
        return orjson.dumps(value).decode()


class _TokenSerializer(URLSafeTimedSerializer):
    """``URLSafeTimedSerializer`` keeping one signer per salt."""

    def __init__(self, secret: str | bytes) -> None:
        super().__init__(
            secret,
            salt=SALT,
            serializer=_OrjsonPayload,
            signer=_KeptKeySigner,
            # hashlib's own SHA-1 (itsdangerous's default is a Python function around it): with
            # it, hmac computes in OpenSSL instead of in Python. The same digest, the same tokens.
            signer_kwargs={"digest_method": hashlib.sha1},
        )
        self._signers: dict[str | bytes | None, t.Any] = {}

    def make_signer(self, salt: str | bytes | None = None) -> t.Any:
        """The signer of ``salt``, made once."""
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer


@functools.lru_cache(maxsize=8)
def _serializer(secret: str | bytes) -> URLSafeTimedSerializer:
    # Cached: building one runs a trial serialization, and it is stateless.
    return _TokenSerializer(secret)


@functools.lru_cache(maxsize=8)
def _token_key(secret: str | bytes) -> bytes:
    return _serializer(secret).make_signer().derive_key()


def _b64decode(text: str) -> bytes:
    """itsdangerous's ``base64_decode`` of an ASCII string."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _loads(secret: str | bytes, token: str) -> tuple[t.Any, float]:
    """The payload and signing time (Unix) of ``token``: what itsdangerous's ``loads`` returns.

    A token as :func:`issue_token` makes it (ASCII, its payload not compressed) is
    checked here with the same steps and primitives in a third of the time (it is
    checked on every stream opened): the HMAC-SHA1 of ``payload.timestamp`` under the
    derived key, compared in constant time, then the timestamp and the JSON decoded.
    Anything else, and every failure, goes to itsdangerous, which decides (and raises).

    :raises itsdangerous.BadData: as itsdangerous raises it.
    """
    value, _, signature = token.rpartition(".")
    payload, _, stamp = value.rpartition(".")
    if payload and not payload.startswith(".") and token.isascii():
        try:
            expected = hmac.digest(_token_key(secret), value.encode(), "sha1")
            if hmac.compare_digest(_b64decode(signature), expected):
                signed_at = int.from_bytes(_b64decode(stamp), "big")
                if signed_at < 1 << 40:
                    return orjson.loads(_b64decode(payload)), float(signed_at)
        except (ValueError, binascii.Error):  # (orjson's JSONDecodeError is a ValueError)
            pass
    loaded, signed = _serializer(secret).loads(token, return_timestamp=True)
    return loaded, signed.timestamp()


def issue_token(secret: str | bytes, user_id: str, ttl: float, topics: t.Sequence[str] = ()) -> str:
    """A token that lets its holder open ``user_id``'s stream for ``ttl`` seconds (following ``topics``)."""
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    payload: dict[str, t.Any] = {"u": user_id, "t": ttl}
    if topics:
        payload["p"] = list(checked_topic_grants(topics))
    return _serializer(secret).dumps(payload)


def verify_token(secret: str | bytes, token: str, user_id: str, *, now: float | None = None) -> Grant:
    """Check ``token`` for ``user_id``.

    :raises InvalidToken: malformed, or signed with another secret.
    :raises TokenExpired: past its lifetime.
    :raises Forbidden: valid, but for another user.
    """
    try:
        payload, signed_at = _loads(secret, token)
    except SignatureExpired as exc:  # pragma: no cover - we never pass max_age
        raise TokenExpired("the token has expired") from exc
    except BadData as exc:
        raise InvalidToken("the token is not valid (malformed, or signed with another secret)") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), str):
        raise InvalidToken("the token is not a connection token")
    ttl = payload.get("t")
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
        raise InvalidToken("the token has no valid lifetime")
    expires_at = signed_at + ttl
    if (time.time() if now is None else now) >= expires_at:
        raise TokenExpired("the token has expired; ask for a new one")
    if payload["u"] != user_id:
        raise Forbidden("this token is for another user")
    topics = payload.get("p", [])
    if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
        raise InvalidToken("the token's topics are not a list of names")
    return Grant(user_id, expires_at, tuple(topics))


def check_publish_key(keys: tuple[str, ...], presented: str | None) -> str:
    """The configured key equal to ``presented`` (constant-time against each).

    :raises Unauthenticated: no key presented.
    :raises Forbidden: a key that is not configured.
    """
    if not presented:
        raise Unauthenticated("this endpoint needs a publish key: send Authorization: Bearer <key>")
    found = ""
    candidate = presented.encode()
    for key in keys:  # compare against all of them, whatever matches
        if hmac.compare_digest(key.encode(), candidate):
            found = key
    if not found:
        raise Forbidden("this publish key is not valid")
    return found


def key_id(key: str) -> str:
    """A short, non-reversible name for a key (for rate limits and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]
