"""Exceptions of sse_notify.

- :class:`SSENotifyError` — base of everything raised here

  - :class:`ConfigError` — a setting is missing or wrong (raised at start)
  - :class:`BrokerError` — the store failed

    - :class:`BrokerUnavailable` — the store cannot be reached (answered 503)

      - :class:`BrokerClosed` — closed in this process

  - :class:`InvalidNotice` — a publish was refused (answered 400)
  - :class:`IdempotencyKeyReused` — an ``Idempotency-Key`` sent again with another request (422)
  - :class:`AuthError` — a request is not allowed

    - :class:`Unauthenticated` — no credentials, or bad ones (answered 401)

      - :class:`InvalidToken` — a token that is malformed or was tampered with
      - :class:`TokenExpired` — a token past its expiry

    - :class:`Forbidden` — good credentials, but not for this (answered 403)
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidNotice",
    "InvalidToken",
    "SSENotifyError",
    "TokenExpired",
    "Unauthenticated",
]


class SSENotifyError(Exception):
    """Base class of every error sse_notify raises."""


class ConfigError(SSENotifyError):
    """A setting is missing or has a wrong value."""


class BrokerError(SSENotifyError):
    """The notice store failed."""


class BrokerUnavailable(BrokerError):
    """The notice store cannot be reached right now; try again later."""


class BrokerClosed(BrokerUnavailable):
    """The store was closed in this process (it is shutting down)."""


class InvalidNotice(SSENotifyError, ValueError):
    """A notice was refused: bad user id or data that is not a JSON object."""


class IdempotencyKeyReused(SSENotifyError):
    """An idempotency key came again with a different request (answered 422); nothing was stored."""


class AuthError(SSENotifyError):
    """A request is not allowed. ``code`` is the machine-readable error name."""

    status = 401
    code = "unauthorized"


class Unauthenticated(AuthError):
    """No credentials, or credentials that are not valid (401)."""


class InvalidToken(Unauthenticated):
    """A connection token that is malformed, or whose signature does not match."""

    code = "invalid_token"


class TokenExpired(Unauthenticated):
    """A connection token past its expiry."""

    code = "token_expired"


class Forbidden(AuthError):
    """Valid credentials that do not allow this request (403)."""

    status = 403
    code = "forbidden"
