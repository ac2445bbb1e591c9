"""A publisher client for other services and background jobs (Celery, RQ, cron, another web app).

.. code-block:: python

    from sse_notify.client import Client

    with Client("https://notify.example.com", publish_key) as notify:
        notice = notify.publish("alice", {"title": "Your export is ready"})

It speaks the HTTP API of the README with a publish key. Design choices, on purpose:

- **Synchronous, on httpx.** Background jobs are mostly synchronous code; httpx gives
  timeouts on every phase, a connection pool and a clear family of transport errors.
  httpx is an optional extra (``pip install "sse-notify[client]"``) and only this module
  imports it. Nothing here needs gevent: the client works in a plain thread or process.
- **Every publish is safe to retry.** Each call of :meth:`Client.publish`,
  :meth:`Client.publish_many` and :meth:`Client.broadcast` sends an ``Idempotency-Key``
  header: the caller's, or a fresh random one. Every retry *of that call* sends the same
  key, so a notice whose ``201`` was lost on the way back (a reset connection, a read
  timeout) is stored once, and the retry gets the original notice back. A caller that
  passes its own stable key (a Celery task id, an outbox row id) makes retries across
  process restarts safe too. A server older than idempotency keys ignores the header; then a
  retry after a lost answer can store a notice twice.
- **What is retried.** Connection errors, timeouts, a connection closed without an answer
  (:class:`httpx.TransportError`, except the ones that mean the request itself is wrong),
  ``502``/``503``/``504``, and ``429`` after its ``Retry-After``. Nothing else: any other
  ``4xx`` says the request is wrong and will stay wrong, and a ``500`` is a server bug, not
  an outage. ``retries`` counts the *extra* attempts; between them the client sleeps a
  random time up to ``backoff * 2**n`` seconds, capped at ``max_backoff`` ("full jitter",
  so many workers that failed together do not come back together). The other calls (marks,
  tokens, kicks, presence) are harmless to repeat and are retried the same way.
- **Errors say what is wrong.** Every failure is a :class:`ClientError` carrying the HTTP
  status, the server's error code and detail, the number of attempts and the idempotency
  key, so a job can log it, or keep the key and try again later:

  - :class:`ClientError` — a request was refused or failed (a ``4xx`` without a subclass below)

    - :class:`Unauthorized` — ``401`` or ``403``: a wrong or missing publish key
    - :class:`NotFound` — ``404``: e.g. a notice that is not in the user's inbox
    - :class:`IdempotencyKeyReused` — ``422``: the key was used for a different request
      (also a :class:`sse_notify.errors.IdempotencyKeyReused`)
    - :class:`RateLimited` — ``429`` on every attempt; ``retry_after`` says how long to wait
    - :class:`ServerUnavailable` — ``5xx``, or no answer at all, after every attempt

- **Thread-safe.** A :class:`Client` keeps no per-call state: share one per process (or
  per worker), as the connection pool is the point of keeping it.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import typing as t
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'sse_notify.client needs httpx, which is an optional extra: pip install "sse-notify[client]"'
    ) from exc

from .delivery import OPTIONS, Receipt, parse_time
from .errors import ClientError, NotFound, ServerUnavailable, Unauthorized
from .errors import ClientIdempotencyKeyReused as IdempotencyKeyReused
from .errors import ClientRateLimited as RateLimited
from .notices import IDEMPOTENCY_KEY, checked_idempotency_key, dumps, loads
from .presence import Presence

if t.TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "Client",
    "ClientError",
    "IdempotencyKeyReused",
    "NotFound",
    "Presence",
    "RateLimited",
    "ServerUnavailable",
    "Token",
    "Unauthorized",
    "new_idempotency_key",
]

log = logging.getLogger("sse_notify.client")

#: What the server accepts as an ``Idempotency-Key``: 1 to 200 printable ASCII characters.
IDEMPOTENCY_KEY_PATTERN = IDEMPOTENCY_KEY

#: Answers worth another attempt: the server (or a proxy in front of it) is overloaded or
#: cannot reach its store, and nothing was stored.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: Transport errors worth another attempt: the server could not be reached, did not answer
#: in time, or closed the connection. Not ``UnsupportedProtocol`` or ``LocalProtocolError``:
#: those mean the request itself is wrong, and would be wrong again.
RETRY_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)

JSONObject = t.Mapping[str, t.Any]


def new_idempotency_key() -> str:
    """A fresh random idempotency key (32 hex digits), as the client makes one per publish."""
    return uuid.uuid4().hex


_ERRORS_BY_STATUS: dict[int, type[ClientError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    422: IdempotencyKeyReused,
}


@dataclass(frozen=True)
class Token:
    """A connection token for one user's stream (``?token=`` or ``Authorization: Bearer``)."""

    user_id: str
    token: str
    #: Expiry, in seconds since the epoch.
    expires_at: int

    def __str__(self) -> str:
        return self.token


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of ``response`` in seconds (from a number or an HTTP date), if any."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _segment(value: str) -> str:
    """``value`` as one path segment: every reserved character escaped, and never ``.`` or ``..``.

    (A literal ``..`` would be resolved away by URL normalization and hit another route.)
    """
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in {".", ".."} else segment


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """The server's ``error`` code and ``detail`` of an error answer (or a bit of any other body)."""
    try:
        body = loads(response.content)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], str(body.get("detail", ""))
    text = " ".join(response.text.split())[:200]
    return None, text or response.reason_phrase


def _query(options: t.Mapping[str, t.Any]) -> dict[str, str] | None:
    """Delivery options as the query of a single publish (checked by the server)."""
    query: dict[str, str] = {}
    for name, value in options.items():
        if name not in OPTIONS:
            raise TypeError(f"unknown delivery option {name!r} (options: {', '.join(OPTIONS)})")
        if value is None:
            continue
        if isinstance(value, datetime):
            parse_time(value)  # an aware datetime, or a ValueError here
            value = value.isoformat()
        query[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return query or None


def _marking(action: str, summary: str) -> t.Callable[[Client, str, int], int]:
    """The :class:`Client` method that applies ``action`` (read, unread, archive, unarchive) to a notice."""

    def mark(self: Client, user_id: str, notice_id: int) -> int:
        return self._mark(user_id, notice_id, action)

    mark.__name__ = mark.__qualname__ = f"mark_{action}" if "read" in action else action
    mark.__doc__ = (
        f"{summary}\n\n:returns: the user's unread count afterwards.\n"
        ":raises NotFound: when the notice is not in the user's inbox.\n"
    )
    return mark


class Client:
    """A publisher: sends notices, marks, tokens and kicks to an sse_notify server.

    :param base_url: where the server's routes are, e.g. ``"https://notify.example.com"``,
        or ``"http://127.0.0.1:8000/notify"`` under a ``SSE_NOTIFY_URL_PREFIX``.
    :param publish_key: one of the server's ``SSE_NOTIFY_PUBLISH_KEYS``.
    :param timeout: seconds each attempt may wait to connect, to send, and between bytes of
        the answer (an :class:`httpx.Timeout` sets them one by one).
    :param retries: extra attempts after the first, for the failures that are worth one
        (see the module docstring). ``0`` never retries.
    :param backoff: the first retry waits a random time up to this many seconds; each next
        one up to twice as long as the one before.
    :param max_backoff: no wait is longer than this, a ``Retry-After`` included.
    :param headers: extra headers for every request.
    :param transport: an httpx transport, to route requests through something else (a Unix
        socket, a test double); by default httpx's own.
    :raises ValueError: for an empty ``publish_key``, or a negative ``retries``, ``backoff``
        or ``max_backoff``.
    """

    def __init__(
        self,
        base_url: str,
        publish_key: str,
        *,
        timeout: float | httpx.Timeout = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        headers: t.Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not publish_key.strip():
            raise ValueError("publish_key is empty: pass one of the server's SSE_NOTIFY_PUBLISH_KEYS")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError(
                f"retries, backoff and max_backoff must not be negative, "
                f"got {retries}, {backoff} and {max_backoff}"
            )
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        all_headers = {"User-Agent": "sse-notify-client", **(headers or {})}
        all_headers["Authorization"] = f"Bearer {publish_key}"
        self._http = httpx.Client(
            base_url=base_url,
            headers=all_headers,
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<Client {self._http.base_url} retries={self.retries}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        user_id: str,
        data: JSONObject,
        *,
        idempotency_key: str | None = None,
        **options: t.Any,
    ) -> Receipt:
        """Deliver a notice to one user: their open streams and inbox (or schedule, hold, suppress it).

        :param user_id: the user (1 to 128 of ``A-Z a-z 0-9 _ . @ : + -``).
        :param data: the notice's JSON object.
        :param idempotency_key: makes a repeat of this request (same user and data) store
            nothing new and return the original notice. Default: a fresh random key, reused
            by every retry of this call. Pass a stable one (a task id) to make retries across
            processes safe too.
        :param options: ``category``, ``critical``, ``send_at`` (an aware ``datetime`` or RFC
            3339 text) or ``delay`` (seconds), as the server's delivery options.
        :returns: what happened (``status``), with the stored notice (``notice``, ``id``) or
            what waits (``scheduled_id``, ``due``).
        :raises ClientError: or a subclass, when the server refuses or cannot be reached.
        :raises ValueError: for an idempotency key the server would refuse.
        """
        path = f"/users/{_segment(user_id)}/notices"
        return Receipt.from_fields(self._publish(path, data, idempotency_key, _query(options)))

    def publish_many(
        self,
        items: t.Sequence[tuple[str, JSONObject]],
        *,
        idempotency_key: str | None = None,
        **options: t.Any,
    ) -> list[Receipt]:
        """Deliver several notices; those delivered now are stored in one transaction (all or none).

        :param items: ``(user_id, data)`` pairs, 1 to 1000 (the server's limit), in order.
        :param idempotency_key: as for :meth:`publish`; it covers the whole list.
        :param options: as for :meth:`publish`, for every item.
        :returns: a receipt per item, in the order of ``items``.
        :raises ClientError: or a subclass, when the server refuses or cannot be reached;
            a ``400`` names the item at fault.
        :raises ValueError: for an idempotency key the server would refuse.
        """
        shared = _query(options) or {}
        batch = [{"user_id": user_id, "data": data, **shared} for user_id, data in items]
        return [Receipt.from_fields(item) for item in self._publish("/notices", batch, idempotency_key)]

    def broadcast(self, data: JSONObject, *, idempotency_key: str | None = None, **options: t.Any) -> Receipt:
        """Deliver a notice to every user's open streams and inbox (each honours its user's mutes).

        :param data: the notice's JSON object.
        :param idempotency_key: as for :meth:`publish`.
        :param options: as for :meth:`publish`.
        :returns: what happened; a delivered notice's ``user_id`` is ``None``.
        :raises ClientError: or a subclass, when the server refuses or cannot be reached.
        :raises ValueError: for an idempotency key the server would refuse.
        """
        return Receipt.from_fields(self._publish("/broadcast", data, idempotency_key, _query(options)))

    def _publish(
        self, path: str, body: t.Any, idempotency_key: str | None, params: t.Mapping[str, str] | None = None
    ) -> t.Any:
        key = new_idempotency_key() if idempotency_key is None else checked_idempotency_key(idempotency_key)
        return self._request("POST", path, body=body, params=params, idempotency_key=key)

    def remove(self, user_id: str, notice_id: int | str) -> None:
        """Cancel a notice that waits (by its ``scheduled_id``), or remove one from the user's inbox (by id).

        :raises NotFound: when no such notice is the user's.
        :raises ClientError: with ``status`` 409 for a broadcast (archive it instead).
        """
        self._request("DELETE", f"/users/{_segment(user_id)}/notices/{_segment(str(notice_id))}")

    # -- preferences --------------------------------------------------------------------------

    def preferences(self, user_id: str) -> dict[str, t.Any]:
        """The user's preferences: ``categories``, ``default``, ``quiet_hours``."""
        return t.cast(dict[str, t.Any], self._request("GET", f"/users/{_segment(user_id)}/preferences"))

    def set_preferences(self, user_id: str, preferences: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Replace the user's preferences (every open tab of theirs is told); the preferences now."""
        path = f"/users/{_segment(user_id)}/preferences"
        return t.cast(dict[str, t.Any], self._request("PUT", path, body=dict(preferences)))

    def contacts(self, user_id: str) -> dict[str, str]:
        """Where the user's unread notices fall back to: ``{"email": ...}`` (``{}``: nowhere)."""
        return t.cast(dict[str, str], self._request("GET", f"/users/{_segment(user_id)}/contacts"))

    def set_contacts(self, user_id: str, *, email: str | None) -> dict[str, str]:
        """Set (or, with ``None``, remove) the user's email address for fallbacks; the contacts now."""
        path = f"/users/{_segment(user_id)}/contacts"
        return t.cast(dict[str, str], self._request("PUT", path, body={"email": email}))

    # -- the inbox ---------------------------------------------------------------------------

    # Each returns the user's unread count afterwards, and raises NotFound for a notice that is not
    # in the user's inbox; every open stream of the user is told (docs/PYTHON-CLIENT.md).
    mark_read = _marking("read", "Mark one notice of the user's inbox read.")
    mark_unread = _marking("unread", "Mark one notice unread again (this wins over :meth:`mark_all_read`).")
    archive = _marking("archive", "Archive one notice: it leaves the inbox list and the unread count.")
    unarchive = _marking("unarchive", "Bring an archived notice back to the inbox.")

    def mark_all_read(self, user_id: str) -> int:
        """Mark everything in the user's inbox read, up to the newest notice now.

        :returns: the id of the newest notice covered (``0`` for an empty inbox).
        """
        body = self._request("POST", f"/users/{_segment(user_id)}/notices/read-all")
        return int(body["through"] or 0)

    def _mark(self, user_id: str, notice_id: int, action: str) -> int:
        path = f"/users/{_segment(user_id)}/notices/{int(notice_id)}/{action}"
        return int(self._request("POST", path)["unread"])

    # -- streams -----------------------------------------------------------------------------

    def issue_token(self, user_id: str, ttl: int | None = None) -> Token:
        """A connection token for the user's stream, for a page of your app to connect with.

        :param ttl: seconds it stays valid (1 to 30 days); default: the server's
            ``SSE_NOTIFY_TOKEN_TTL``.
        """
        params = None if ttl is None else {"ttl": str(ttl)}
        body = self._request("POST", f"/users/{_segment(user_id)}/tokens", params=params)
        return Token(user_id=body["user_id"], token=body["token"], expires_at=int(body["expires_at"]))

    def kick(self, user_id: str) -> None:
        """Close every open stream of the user, on every worker and host.

        A browser client stays closed until its page reconnects; tokens stay valid.
        """
        self._request("POST", f"/users/{_segment(user_id)}/kick")

    def presence(self, user_id: str) -> Presence:
        """Whether the user has open streams right now, on any worker or host, and how many.

        Streams on the worker that answers count at once, others within the server's
        ``SSE_NOTIFY_PRESENCE_INTERVAL``.

        :returns: a :class:`sse_notify.presence.Presence` (``online``, ``streams``), as
            ``sse_notify.presence()`` returns inside the app.
        """
        body = self._request("GET", f"/users/{_segment(user_id)}/presence")
        return Presence(user_id=body["user_id"], streams=int(body["streams"]))

    # -- the retry loop ----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: t.Any = None,
        params: t.Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> t.Any:
        """Send a request, retrying what is worth it; return the answer's JSON.

        The body is encoded once, so every attempt sends the same bytes.
        """
        headers: dict[str, str] = {}
        content = None
        if body is not None:
            content = dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        what = f"{method} {path}"
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self._http.request(method, path, content=content, params=params, headers=headers)
            except RETRY_ERRORS as exc:
                failure: httpx.Response | httpx.TransportError = exc
                wait = None
            except httpx.TransportError as exc:  # the request itself is wrong: no retry
                raise self._failure(what, exc, attempts, idempotency_key) from exc
            else:
                if response.is_success:
                    return self._json(what, response, attempts, idempotency_key)
                if response.status_code not in RETRY_STATUSES:
                    raise self._failure(what, response, attempts, idempotency_key)
                failure = response
                wait = _retry_after(response)
            if attempts > self.retries:
                error = self._failure(what, failure, attempts, idempotency_key)
                if isinstance(failure, httpx.TransportError):
                    raise error from failure
                raise error
            delay = self._delay(attempts, wait)
            log.info("retrying %s in %.2f s (attempt %d failed: %s)", what, delay, attempts, _brief(failure))
            time.sleep(delay)

    def _delay(self, attempts: int, retry_after: float | None) -> float:
        """How long to sleep before the next attempt: ``Retry-After``, or a full-jitter backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempts - 1)))

    def _json(self, what: str, response: httpx.Response, attempts: int, key: str | None) -> t.Any:
        try:
            return loads(response.content)
        except (ValueError, RecursionError):
            raise ClientError(
                f"{what}: {response.status_code} with a body that is not JSON: {response.text[:200]!r}",
                status=response.status_code,
                detail="the answer is not JSON",
                attempts=attempts,
                idempotency_key=key,
            ) from None

    def _failure(
        self,
        what: str,
        failure: httpx.Response | httpx.TransportError,
        attempts: int,
        key: str | None,
    ) -> ClientError:
        """The exception for a request that failed: which one, what the server said, how often."""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(failure, httpx.TransportError):
            detail = _brief(failure)
            cls = ServerUnavailable if isinstance(failure, RETRY_ERRORS) else ClientError
            return cls(
                f"{what}: no answer from {self._http.base_url}: {detail}{tries}",
                detail=detail,
                attempts=attempts,
                idempotency_key=key,
            )
        status = failure.status_code
        error, detail = _error_fields(failure)
        message = f"{what}: {status} {error or failure.reason_phrase}: {detail}{tries}"
        fields: dict[str, t.Any] = {
            "status": status,
            "error": error,
            "detail": detail,
            "attempts": attempts,
            "idempotency_key": key,
        }
        if status == 429:
            return RateLimited(message, retry_after=_retry_after(failure), **fields)
        if status >= 500:
            return ServerUnavailable(message, **fields)
        return _ERRORS_BY_STATUS.get(status, ClientError)(message, **fields)


def _brief(failure: httpx.Response | httpx.TransportError) -> str:
    """One line about a failed attempt, for logs and messages."""
    if isinstance(failure, httpx.Response):
        return f"{failure.status_code} {failure.reason_phrase}"
    return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
