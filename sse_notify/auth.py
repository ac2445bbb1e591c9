"""Connection tokens and publish keys.

Connection tokens are signed with the app's secret by itsdangerous
(``URLSafeTimedSerializer``, salt ``sse-notify-stream``). A token names one user
and a lifetime; the signing time is in the signature, so the expiry cannot be
changed without the secret. Publish keys are plain shared secrets, compared in
constant time against every configured key (several at once, for rotation).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from .errors import Forbidden, InvalidRequest, InvalidToken, TokenExpired, Unauthenticated

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
    """What a valid token allows: streaming ``user_id`` until ``expires_at`` (Unix time)."""

    user_id: str
    expires_at: float


@functools.lru_cache(maxsize=8)
def _serializer(secret: str | bytes) -> URLSafeTimedSerializer:
    # Cached: building one runs a trial serialization (about a fifth of the
    # CPU of opening a stream, measured with py-spy), and it is stateless.
    return URLSafeTimedSerializer(secret, salt=SALT)


def issue_token(secret: str | bytes, user_id: str, ttl: float) -> str:
    """A token that lets its holder open ``user_id``'s stream for ``ttl`` seconds."""
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    return _serializer(secret).dumps({"u": user_id, "t": ttl})


def verify_token(secret: str | bytes, token: str, user_id: str, *, now: float | None = None) -> Grant:
    """Check ``token`` for ``user_id``.

    :raises InvalidToken: malformed, or signed with another secret.
    :raises TokenExpired: past its lifetime.
    :raises Forbidden: valid, but for another user.
    """
    try:
        payload, signed_at = _serializer(secret).loads(token, return_timestamp=True)
    except SignatureExpired as exc:  # pragma: no cover - we never pass max_age
        raise TokenExpired("the token has expired") from exc
    except BadData as exc:
        raise InvalidToken("the token is not valid (malformed, or signed with another secret)") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), str):
        raise InvalidToken("the token is not a connection token")
    ttl = payload.get("t")
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
        raise InvalidToken("the token has no valid lifetime")
    expires_at = signed_at.timestamp() + ttl
    if (time.time() if now is None else now) >= expires_at:
        raise TokenExpired("the token has expired; ask for a new one")
    if payload["u"] != user_id:
        raise Forbidden("this token is for another user")
    return Grant(user_id, expires_at)


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
