"""A publisher client for other services and background jobs (Celery, RQ, cron, another web app).

.. code-block:: python

    from sse_notify.client import Client

    with Client("https://notify.example.com", publish_key) as notify:
        notice = notify.publish("alice", {"title": "Your export is ready"})

It speaks the HTTP API of the README with a publish key. Design choices, on purpose:

- **On httpx, synchronous and asyncio.** Background jobs are mostly synchronous code
  (:class:`Client`); services on asyncio get :class:`AsyncClient`, with the same methods as
  coroutines. httpx gives timeouts on every phase, a connection pool and a clear family of
  transport errors. Both clients send the same requests (``_Calls`` builds each one, without
  sending it) and judge each attempt by the same rule (``_Policy._verdict``); only the loop that
  sends and sleeps is written twice, once blocking and once awaiting. Nothing here needs gevent:
  the client works in a plain thread or process.
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

import asyncio
import email.utils
import functools
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
    pass

__all__ = [
    "IDEMPOTENCY_KEY_PATTERN",
    "AsyncClient",
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
R = t.TypeVar("R")


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


class _Call(t.Generic[R]):
    """One request of the API, built without sending it: both clients send the same ones."""

    __slots__ = ("attempts", "idempotency_key", "method", "options", "parse", "path")

    def __init__(
        self,
        method: str,
        path: str,
        parse: t.Callable[[t.Any], R],
        *,
        body: t.Any = None,
        params: t.Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self.method, self.path, self.parse = method, path, parse
        self.idempotency_key = idempotency_key
        #: Attempts made so far.
        self.attempts = 0
        headers: dict[str, str] = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        # Encoded once, so every attempt sends the same bytes.
        content = None if body is None else dumps(body).encode()
        #: The request's other arguments, for ``httpx``'s ``request``.
        self.options: dict[str, t.Any] = {"content": content, "params": params, "headers": headers}

    @property
    def what(self) -> str:
        """``POST /users/…/notices``, for messages."""
        return f"{self.method} {self.path}"


def _publish_call(
    path: str,
    body: t.Any,
    key: str | None,
    params: t.Mapping[str, str] | None,
    parse: t.Callable[[t.Any], R],
) -> _Call[R]:
    """A publish: with the caller's idempotency key (checked), or a fresh one every retry reuses."""
    key = new_idempotency_key() if key is None else checked_idempotency_key(key)
    return _Call("POST", path, parse, body=body, params=params, idempotency_key=key)


def _nothing(_: t.Any) -> None:
    return None


P = t.ParamSpec("P")


class _Api(t.Generic[P, R]):
    """One call of the API: on a :class:`Client` a method that sends it and returns its answer, on
    an :class:`AsyncClient` a coroutine function that does."""

    def __init__(self, build: t.Callable[P, _Call[R]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__
        self.__name__ = self.__qualname__ = build.__name__

    @t.overload
    def __get__(self, client: None, owner: type[t.Any]) -> _Api[P, R]: ...

    @t.overload
    def __get__(self, client: Client, owner: type[t.Any]) -> t.Callable[P, R]: ...

    @t.overload
    def __get__(self, client: AsyncClient, owner: type[t.Any]) -> t.Callable[P, t.Awaitable[R]]: ...

    def __get__(self, client: _Policy[t.Any] | None, owner: type[t.Any]) -> t.Any:
        return self if client is None else client._method(self.build)


def _marker(action: str, summary: str) -> _Api[[str, int], int]:
    """The call that applies ``action`` (read, unread, archive, unarchive) to one notice."""

    def mark(user_id: str, notice_id: int) -> _Call[int]:
        path = f"/users/{_segment(user_id)}/notices/{int(notice_id)}/{action}"
        return _Call("POST", path, lambda body: int(body["unread"]))

    mark.__name__ = f"mark_{action}" if "read" in action else action
    mark.__doc__ = (
        f"{summary}\n\n:returns: the user's unread count afterwards.\n"
        ":raises NotFound: when the notice is not in the user's inbox.\n"
    )
    return _Api(mark)


class _API:
    """Every call of the API, defined once: the request and how to read its answer.

    Each is an :class:`_Api`: a blocking method of :class:`Client`, a coroutine of
    :class:`AsyncClient`, with this signature and docstring.
    """

    # -- publishing -------------------------------------------------------------------------

    @_Api
    def publish(
        user_id: str, data: JSONObject, *, idempotency_key: str | None = None, **options: t.Any
    ) -> _Call[Receipt]:
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
        return _publish_call(path, data, idempotency_key, _query(options), Receipt.from_fields)

    @_Api
    def publish_many(
        items: t.Sequence[tuple[str, JSONObject]], *, idempotency_key: str | None = None, **options: t.Any
    ) -> _Call[list[Receipt]]:
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
        return _publish_call(
            "/notices", batch, idempotency_key, None, lambda b: [Receipt.from_fields(i) for i in b]
        )

    @_Api
    def broadcast(
        data: JSONObject, *, idempotency_key: str | None = None, **options: t.Any
    ) -> _Call[Receipt]:
        """Deliver a notice to every user's open streams and inbox (each honours its user's mutes).

        :param data: the notice's JSON object.
        :param idempotency_key: as for :meth:`publish`.
        :param options: as for :meth:`publish`.
        :returns: what happened; a delivered notice's ``user_id`` is ``None``.
        :raises ClientError: or a subclass, when the server refuses or cannot be reached.
        :raises ValueError: for an idempotency key the server would refuse.
        """
        return _publish_call("/broadcast", data, idempotency_key, _query(options), Receipt.from_fields)

    @_Api
    def notify_topic(
        topic: str, data: JSONObject, *, idempotency_key: str | None = None, **options: t.Any
    ) -> _Call[Receipt]:
        """Deliver a notice to every open stream that follows ``topic`` (``?topics=``); in no inbox.

        :param data: the notice's JSON object.
        :param idempotency_key: as for :meth:`publish`.
        :param options: as for :meth:`publish` (not ``group``).
        :returns: what happened; a delivered notice's ``topic`` is ``topic``, its ``user_id`` ``None``.
        :raises ClientError: or a subclass, when the server refuses or cannot be reached.
        :raises ValueError: for an idempotency key the server would refuse.
        """
        path = f"/topics/{_segment(topic)}/notices"
        return _publish_call(path, data, idempotency_key, _query(options), Receipt.from_fields)

    @_Api
    def remove(user_id: str, notice_id: int | str) -> _Call[None]:
        """Cancel a notice that waits (by its ``scheduled_id``), or remove one from the user's inbox (by id).

        :raises NotFound: when no such notice is the user's.
        :raises ClientError: with ``status`` 409 for a broadcast (archive it instead).
        """
        return _Call("DELETE", f"/users/{_segment(user_id)}/notices/{_segment(str(notice_id))}", _nothing)

    # -- preferences --------------------------------------------------------------------------

    @_Api
    def preferences(user_id: str) -> _Call[dict[str, t.Any]]:
        """The user's preferences: ``categories``, ``default``, ``quiet_hours``."""
        return _Call("GET", f"/users/{_segment(user_id)}/preferences", dict)

    @_Api
    def set_preferences(user_id: str, preferences: t.Mapping[str, t.Any]) -> _Call[dict[str, t.Any]]:
        """Replace the user's preferences (every open tab of theirs is told); the preferences now."""
        return _Call("PUT", f"/users/{_segment(user_id)}/preferences", dict, body=dict(preferences))

    @_Api
    def contacts(user_id: str) -> _Call[dict[str, str]]:
        """Where the user's unread notices fall back to: ``{"email": ...}`` (``{}``: nowhere)."""
        return _Call("GET", f"/users/{_segment(user_id)}/contacts", dict)

    @_Api
    def set_contacts(user_id: str, *, email: str | None) -> _Call[dict[str, str]]:
        """Set (or, with ``None``, remove) the user's email address for fallbacks; the contacts now."""
        return _Call("PUT", f"/users/{_segment(user_id)}/contacts", dict, body={"email": email})

    # -- the inbox ---------------------------------------------------------------------------

    mark_read = _marker("read", "Mark one notice of the user's inbox read.")
    mark_unread = _marker("unread", "Mark one notice unread again (this wins over ``mark_all_read``).")
    archive = _marker("archive", "Archive one notice: it leaves the inbox list and the unread count.")
    unarchive = _marker("unarchive", "Bring an archived notice back to the inbox.")

    @_Api
    def mark_all_read(user_id: str) -> _Call[int]:
        """Mark everything in the user's inbox read, up to the newest notice now.

        :returns: the id of the newest notice covered (``0`` for an empty inbox).
        """
        return _Call("POST", f"/users/{_segment(user_id)}/notices/read-all", lambda b: int(b["through"] or 0))

    # -- streams -----------------------------------------------------------------------------

    @_Api
    def issue_token(user_id: str, ttl: int | None = None, topics: t.Sequence[str] = ()) -> _Call[Token]:
        """A connection token for the user's stream, for a page of your app to connect with.

        :param ttl: seconds it stays valid (1 to 30 days); default: the server's
            ``SSE_NOTIFY_TOKEN_TTL``.
        :param topics: topics the stream may follow (``?topics=``): names, or prefixes ending in ``*``.
        """
        params = {} if ttl is None else {"ttl": str(ttl)}
        if topics:
            params["topics"] = ",".join(topics)
        return _Call(
            "POST",
            f"/users/{_segment(user_id)}/tokens",
            lambda b: Token(user_id=b["user_id"], token=b["token"], expires_at=int(b["expires_at"])),
            params=params,
        )

    @_Api
    def kick(user_id: str) -> _Call[None]:
        """Close every open stream of the user, on every worker and host.

        A browser client stays closed until its page reconnects; tokens stay valid.
        """
        return _Call("POST", f"/users/{_segment(user_id)}/kick", _nothing)

    @_Api
    def presence(user_id: str) -> _Call[Presence]:
        """Whether the user has open streams right now, on any worker or host, and how many.

        Streams on the worker that answers count at once, others within the server's
        ``SSE_NOTIFY_PRESENCE_INTERVAL``.

        :returns: a :class:`sse_notify.presence.Presence` (``online``, ``streams``), as
            ``sse_notify.presence()`` returns inside the app.
        """
        return _Call(
            "GET",
            f"/users/{_segment(user_id)}/presence",
            lambda b: Presence(user_id=b["user_id"], streams=int(b["streams"])),
        )


class _Retry(t.NamedTuple):
    """Another attempt, after ``delay`` seconds."""

    delay: float


Transport = t.TypeVar("Transport")


class _Policy(_API, t.Generic[Transport]):
    """What both clients share: the API, the settings, and the verdict on each attempt (see the
    module docstring). Parameters: :class:`Client`'s."""

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
        transport: Transport | None = None,
    ) -> None:
        if not publish_key.strip():
            raise ValueError("publish_key is empty: pass one of the server's SSE_NOTIFY_PUBLISH_KEYS")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError(
                f"retries, backoff and max_backoff must not be negative, "
                f"got {retries}, {backoff} and {max_backoff}"
            )
        self.base_url = base_url
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        all_headers = {"User-Agent": "sse-notify-client", **(headers or {})}
        all_headers["Authorization"] = f"Bearer {publish_key}"
        self._http = self._open(base_url, all_headers, timeout, transport)

    def _open(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout: float | httpx.Timeout,
        transport: Transport | None,
    ) -> t.Any:
        """The httpx client that sends the requests."""
        raise NotImplementedError

    def _method(self, build: t.Callable[P, _Call[R]]) -> t.Callable[P, t.Any]:
        """A call of the API as this client's method."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} retries={self.retries}>"

    def _verdict(self, call: _Call[R], outcome: httpx.Response | httpx.TransportError) -> R | _Retry:
        """The answer's value, another attempt, or (raised) the error that ends the call."""
        call.attempts += 1
        attempts, key = call.attempts, call.idempotency_key
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return call.parse(self._json(call.what, outcome, attempts, key))
            if outcome.status_code not in RETRY_STATUSES:
                raise self._failure(call.what, outcome, attempts, key)
            wait = _retry_after(outcome)
        elif isinstance(outcome, RETRY_ERRORS):
            wait = None
        else:  # the request itself is wrong: no retry
            raise self._failure(call.what, outcome, attempts, key) from outcome
        if attempts > self.retries:
            error = self._failure(call.what, outcome, attempts, key)
            if isinstance(outcome, httpx.TransportError):
                raise error from outcome
            raise error
        delay = self._delay(attempts, wait)
        log.info("retrying %s in %.2f s (attempt %d failed: %s)", call.what, delay, attempts, _brief(outcome))
        return _Retry(delay)

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
                f"{what}: no answer from {self.base_url}: {detail}{tries}",
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


class Client(_Policy[httpx.BaseTransport]):
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

    _http: httpx.Client

    def _open(
        self, base_url: str, headers: dict[str, str], timeout: float | httpx.Timeout, transport: t.Any
    ) -> httpx.Client:
        return httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def _method(self, build: t.Callable[P, _Call[R]]) -> t.Callable[P, R]:
        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> R:
            call = build(*args, **kwargs)
            while isinstance(verdict := self._verdict(call, self._attempt(call)), _Retry):
                time.sleep(verdict.delay)
            return verdict

        return method

    def _attempt(self, call: _Call[t.Any]) -> httpx.Response | httpx.TransportError:
        try:
            return self._http.request(call.method, call.path, **call.options)
        except httpx.TransportError as exc:
            return exc


class AsyncClient(_Policy[httpx.AsyncBaseTransport]):
    """:class:`Client` for asyncio, on :class:`httpx.AsyncClient`: the same methods, each a coroutine,
    with the same retries, idempotency keys and errors.

    Use one per event loop (``async with AsyncClient(...) as notify:``). ``transport`` is an
    :class:`httpx.AsyncBaseTransport`; the other parameters are :class:`Client`'s.
    """

    _http: httpx.AsyncClient

    def _open(
        self, base_url: str, headers: dict[str, str], timeout: float | httpx.Timeout, transport: t.Any
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        await self._http.aclose()

    def _method(self, build: t.Callable[P, _Call[R]]) -> t.Callable[P, t.Awaitable[R]]:
        @functools.wraps(build)
        async def method(*args: P.args, **kwargs: P.kwargs) -> R:
            call = build(*args, **kwargs)
            while isinstance(verdict := self._verdict(call, await self._attempt(call)), _Retry):
                await asyncio.sleep(verdict.delay)  # never blocks the event loop
            return verdict

        return method

    async def _attempt(self, call: _Call[t.Any]) -> httpx.Response | httpx.TransportError:
        try:
            return await self._http.request(call.method, call.path, **call.options)
        except httpx.TransportError as exc:
            return exc


def _brief(failure: httpx.Response | httpx.TransportError) -> str:
    """One line about a failed attempt, for logs and messages."""
    if isinstance(failure, httpx.Response):
        return f"{failure.status_code} {failure.reason_phrase}"
    return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
