"""Exceptions of sse_notify, every one under :class:`SSENotifyError`.

- :class:`SSENotifyError` — base of everything raised here

  - :class:`ConfigError` — a setting is missing or wrong (raised at start)
  - :class:`BrokerError` — the store failed (answered 500)

    - :class:`BrokerUnavailable` — the store cannot be reached (answered 503)

      - :class:`BrokerClosed` — closed in this process

  - :class:`InvalidRequest` — a request or call was refused for what it holds (answered 400)

    - :class:`InvalidNotice` — a publish was refused: data that is not a JSON object, a bad key...

      - :class:`InvalidUserId` — a user id outside the rule of :data:`sse_notify.notices.USER_ID_RULE`
      - :class:`InvalidOption` — a bad delivery option or preference (names which)
      - :class:`PayloadTooLarge` — a body or a notice over its size limit (413)

    - :class:`InvalidField` — a contact or a push subscription was refused (names the field)

  - :class:`IdempotencyKeyReused` — an ``Idempotency-Key`` sent again with another request (422)
  - :class:`NoticeNotFound` — a notice that is not in the user's inbox (404)
  - :class:`Conflict` — a request that cannot apply to what it names (409)
  - :class:`RateLimited` — a publish key over its rate limit (429)
  - :class:`ChannelFailed` — a send on a channel (email, push) that the provider refused (502)
  - :class:`AuthError` — a request is not allowed

    - :class:`Unauthenticated` — no credentials, or bad ones (answered 401)

      - :class:`InvalidToken` — a token that is malformed or was tampered with
      - :class:`TokenExpired` — a token past its expiry

    - :class:`Forbidden` — good credentials, but not for this (answered 403)

  - :class:`ClientError` — what :class:`sse_notify.client.Client` raises: a request was refused,
    or failed after every attempt (``sse_notify.client`` names them without ``Client``)

    - :class:`Unauthorized` — ``401`` or ``403``
    - :class:`NotFound` — ``404``
    - :class:`ClientIdempotencyKeyReused` — ``422`` (also an :class:`IdempotencyKeyReused`)
    - :class:`ClientRateLimited` — ``429`` on every attempt
    - :class:`ServerUnavailable` — ``5xx``, or no answer at all, after every attempt

Every error that an HTTP endpoint answers carries its answer: :attr:`http_status` and the
machine-readable :attr:`error_code` of the JSON body (``{"error": ..., "detail": ...}``).
The blueprint maps them in one place (``views.py``).
"""

from __future__ import annotations

import typing as t

__all__ = [
    "AuthError",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "ChannelFailed",
    "ClientError",
    "ClientIdempotencyKeyReused",
    "ClientRateLimited",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidField",
    "InvalidNotice",
    "InvalidOption",
    "InvalidRequest",
    "InvalidToken",
    "InvalidTopic",
    "InvalidUserId",
    "NotFound",
    "NoticeNotFound",
    "PayloadTooLarge",
    "RateLimited",
    "SSENotifyError",
    "ServerUnavailable",
    "TokenExpired",
    "Unauthenticated",
    "Unauthorized",
]


class SSENotifyError(Exception):
    """Base class of every error sse_notify raises.

    ``http_status`` and ``error_code``: how an endpoint answers it (500, ``internal_server_error``
    for an error that names no answer of its own).
    """

    http_status = 500
    error_code = "internal_server_error"


class ConfigError(SSENotifyError):
    """A setting is missing or has a wrong value."""


class BrokerError(SSENotifyError):
    """The notice store failed."""

    error_code = "store_error"


class BrokerUnavailable(BrokerError):
    """The notice store cannot be reached right now; try again later."""

    http_status = 503
    error_code = "store_unavailable"


class BrokerClosed(BrokerUnavailable):
    """The store was closed in this process (it is shutting down)."""


class InvalidRequest(SSENotifyError, ValueError):
    """A request (or a call from Python) was refused for what it holds; the message says what."""

    http_status = 400
    error_code = "bad_request"


class InvalidNotice(InvalidRequest):
    """A notice was refused: a bad user id, data that is not a JSON object, a bad key..."""

    error_code = "invalid_notice"


class InvalidUserId(InvalidNotice):
    """A user id outside the rule (:data:`sse_notify.notices.USER_ID_RULE`); one answer on every route."""

    error_code = "invalid_user_id"

    def __init__(self, message: str, user_id: object = None) -> None:
        super().__init__(message)
        #: The refused user id, as given.
        self.user_id = user_id


class InvalidTopic(InvalidNotice):
    """A topic name outside the rule (:data:`sse_notify.notices.TOPIC_RULE`), or too many on a stream."""

    error_code = "invalid_topic"

    def __init__(self, message: str, topic: object = None) -> None:
        super().__init__(message)
        #: The refused topic, as given.
        self.topic = topic


class InvalidOption(InvalidNotice):
    """A delivery option (``category``, ``send_at``...) or a preference was refused; names which."""

    error_code = "invalid_option"

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        #: The option (or preference field) refused.
        self.option = option


class PayloadTooLarge(InvalidNotice):
    """A request body or a notice's data is over its size limit (413)."""

    http_status = 413
    error_code = "payload_too_large"

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        #: The limit, in bytes.
        self.limit = limit


class InvalidField(InvalidRequest):
    """A contact or a push subscription was refused (400); names the field."""

    error_code = "invalid_field"

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        #: The field refused.
        self.field = field


class ChannelFailed(SSENotifyError):
    """A send asked for now (a test email) that the provider did not take (502)."""

    http_status = 502
    error_code = "channel_failed"


class IdempotencyKeyReused(SSENotifyError):
    """An idempotency key came again with a different request (answered 422); nothing was stored."""

    http_status = 422
    error_code = "idempotency_key_reused"


class NoticeNotFound(SSENotifyError, LookupError):
    """A notice id that is not (or no longer) in the user's inbox (404)."""

    http_status = 404
    error_code = "not_found"


class Conflict(SSENotifyError):
    """A request that cannot apply to what it names, such as removing a broadcast from one inbox (409)."""

    http_status = 409
    error_code = "conflict"


class RateLimited(SSENotifyError):
    """A publish key sent more than its rate limit (429)."""

    http_status = 429
    error_code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        #: Seconds until the window resets (the ``Retry-After`` header).
        self.retry_after = retry_after


class AuthError(SSENotifyError):
    """A request is not allowed. ``error_code`` is the machine-readable error name."""

    http_status = 401
    error_code = "unauthorized"


class Unauthenticated(AuthError):
    """No credentials, or credentials that are not valid (401)."""


class InvalidToken(Unauthenticated):
    """A connection token that is malformed, or whose signature does not match."""

    error_code = "invalid_token"


class TokenExpired(Unauthenticated):
    """A connection token past its expiry."""

    error_code = "token_expired"


class Forbidden(AuthError):
    """Valid credentials that do not allow this request (403)."""

    http_status = 403
    error_code = "forbidden"


# -- what the HTTP client raises (sse_notify.client) ------------------------------------------


class ClientError(SSENotifyError):
    """A request of :class:`sse_notify.client.Client` was refused, or failed after every attempt.

    ``str(error)`` says which request, the status, the server's error code and detail.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        detail: str = "",
        attempts: int = 1,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status of the last answer, or ``None`` when there was no answer.
        self.status = status
        #: The server's machine-readable error code (``"bad_request"``, ``"store_unavailable"``...),
        #: or ``None`` when there was no answer or it was not the server's JSON.
        self.error = error
        #: What is wrong: the server's ``detail``, or a description of the transport error.
        self.detail = detail
        #: How many requests were sent.
        self.attempts = attempts
        #: The ``Idempotency-Key`` every attempt sent (publish calls only): pass it again to
        #: retry later without risking a duplicate.
        self.idempotency_key = idempotency_key


class Unauthorized(ClientError):
    """``401`` or ``403``: the publish key is missing, wrong, or not allowed this."""


class NotFound(ClientError):
    """``404``: no such route, or a notice that is not in the user's inbox."""


class ClientIdempotencyKeyReused(ClientError, IdempotencyKeyReused):
    """``422``: the idempotency key was already used for a different request.

    Also an :class:`IdempotencyKeyReused`, what the server raises in-process
    (``client.IdempotencyKeyReused``).
    """


class ClientRateLimited(ClientError):
    """``429`` on every attempt: the publish key is over its rate limit (``client.RateLimited``)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: t.Any) -> None:
        super().__init__(message, **kwargs)
        #: Seconds the server asked to wait (its ``Retry-After``), if it said.
        self.retry_after = retry_after


class ServerUnavailable(ClientError):
    """A ``5xx`` answer, or no answer at all, after every attempt; nothing may have been stored.

    When there was no answer, ``status`` is ``None`` and the transport error is ``__cause__``.
    """
