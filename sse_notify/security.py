"""Who may read a stream and who may publish: secrets, checks, rate limits.

Secure by default:

- ``SSE_NOTIFY_AUTH=token`` (the default): a stream needs a connection token for
  its user (``?token=``, ``Authorization: Bearer``, or the token cookie), or the
  host app's ``authorize`` hook must allow it; every write endpoint needs a
  publish key (``Authorization: Bearer <key>``).
- Without ``SECRET_KEY`` / ``SSE_NOTIFY_PUBLISH_KEYS`` (a first run on a laptop),
  random ones are made once and kept in the instance folder (mode 0600), so
  the demo works and tokens survive restarts. Nobody can read a stream without
  them. ``SSE_NOTIFY_PRODUCTION=true`` refuses to start without real ones.
- ``SSE_NOTIFY_AUTH=none`` turns every check off, and says so loudly at start.

Rate limits use the ``limits`` library (the engine of flask-limiter): one
fixed window per publish key. It is imported only when a rate limit is set: it and what it
imports (asyncio among them) are about 4 MiB of every worker's memory.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
import typing as t
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from werkzeug.wrappers import Request

from .auth import Grant, check_publish_key, issue_token, key_id, verify_token
from .config import Settings
from .errors import ConfigError, Forbidden, RateLimited, Unauthenticated

if t.TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.strategies import FixedWindowRateLimiter

__all__ = ["AuthorizeHook", "Security", "TopicHook", "announce", "instance_secret"]

log = logging.getLogger("sse_notify.security")

#: ``authorize(user_id)`` of a host app: ``True`` allows the stream, ``False``
#: refuses it (403), ``None`` leaves the decision to tokens.
AuthorizeHook = t.Callable[[str], "bool | None"]
#: ``authorize_topic(user_id, topic)``: ``True`` lets the user's stream follow the topic,
#: ``False`` refuses it (403), ``None`` leaves it to the token's topics.
TopicHook = t.Callable[[str, str], "bool | None"]


def instance_secret(instance_path: str, name: str) -> str:
    """A random secret kept in ``instance_path/name`` (made once, 0600, shared by every worker)."""
    path = os.path.join(instance_path, name)
    try:
        with open(path) as f:
            value = f.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    os.makedirs(instance_path, exist_ok=True)
    # Write a temporary file, then link it into place: of several workers
    # starting at once, the first link wins and every worker reads that one.
    temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    try:
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)
    with open(path) as f:
        return f.read().strip()


@dataclass
class Security:
    """The auth state of one app (``app.extensions["sse_notify"].security``)."""

    enabled: bool
    secret: str
    publish_keys: tuple[str, ...]
    token_ttl: int
    cookie: str
    development: bool = False
    authorize: AuthorizeHook | None = None
    authorize_topic: TopicHook | None = None
    #: Browser origins allowed to call the API (``SSE_NOTIFY_CORS_ORIGINS``).
    origins: tuple[str, ...] = ()
    rate: RateLimitItem | None = None
    _limiter: FixedWindowRateLimiter | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, secret_key: t.Any, instance_path: str) -> Security:
        """Resolve secrets and keys, refusing what production mode must not run with."""
        missing = []
        if settings.production and not secret_key:
            missing.append("FLASK_SECRET_KEY (the SECRET_KEY that signs connection tokens)")
        if settings.production and not settings.publish_keys:
            missing.append("SSE_NOTIFY_PUBLISH_KEYS (the keys publishers send)")
        if missing and settings.auth == "token":
            raise ConfigError("SSE_NOTIFY_PRODUCTION is on, so set " + " and ".join(missing))
        development = not secret_key or not settings.publish_keys
        secret = str(secret_key) if secret_key else instance_secret(instance_path, "secret_key")
        keys = settings.publish_keys or (instance_secret(instance_path, "publish_key"),)
        security = cls(
            enabled=settings.auth == "token",
            secret=secret,
            publish_keys=keys,
            token_ttl=settings.token_ttl,
            cookie=settings.token_cookie,
            development=development,
            origins=settings.cors_origins,
        )
        if settings.rate_limit:
            from limits import parse
            from limits.storage import storage_from_string
            from limits.strategies import FixedWindowRateLimiter

            try:
                security.rate = parse(settings.rate_limit)
                storage = storage_from_string(settings.rate_limit_storage)
            except Exception as exc:  # limits raises several kinds for a bad rate or storage URL
                raise ConfigError(f"SSE_NOTIFY_RATE_LIMIT / _STORAGE: {exc}") from exc
            security._limiter = FixedWindowRateLimiter(storage)
        return security

    def issue(self, user_id: str, ttl: float | None = None, topics: t.Sequence[str] = ()) -> str:
        """A connection token for ``user_id`` (``SSE_NOTIFY_TOKEN_TTL`` by default), granting ``topics``."""
        return issue_token(self.secret, user_id, self.token_ttl if ttl is None else ttl, topics)

    def stream_grant(self, request: Request, user_id: str, topics: t.Sequence[str] = ()) -> float | None:
        """Check a stream request (following ``topics``); return when its access ends (``None``: never).

        A topic is allowed where the ``authorize_topic`` hook says so, else where the token
        grants it.

        :raises ~sse_notify.errors.AuthError: 401 or 403, before any byte of the stream is sent.
        """
        if not self.enabled:
            return None
        grant = None if self._hook_allows(user_id) else self._token_grant(request, user_id, cookie=True)
        for topic in topics:
            self._check_topic(user_id, topic, grant)
        return None if grant is None else grant.expires_at

    def _check_topic(self, user_id: str, topic: str, grant: Grant | None) -> None:
        """Allow ``topic`` on ``user_id``'s stream (the hook, else the token), or raise 403."""
        if self.authorize_topic is not None:
            decision = self.authorize_topic(user_id, topic)
            if decision is False:
                raise Forbidden(f"the application does not allow the topic {topic!r}")
            if decision is True:
                return
        if grant is None or not grant.allows(topic):
            raise Forbidden(f"the topic {topic!r} is not allowed: the token does not grant it")

    def _hook_allows(self, user_id: str) -> bool:
        """The ``authorize`` hook's answer: ``True`` allows, ``False`` raises 403, else tokens decide."""
        if self.authorize is None:
            return False
        decision = self.authorize(user_id)
        if decision is False:
            raise Forbidden("the application does not allow this")
        return decision is True

    def _token_grant(self, request: Request, user_id: str, cookie: bool) -> Grant:
        # The URL's token first: it is the one the page chose for this stream
        # (an Authorization header may belong to a proxy or another API).
        token = request.args.get("token") or _bearer(request) or (cookie and request.cookies.get(self.cookie))
        if not token:
            where = (
                f"?token=, Authorization: Bearer, or the {self.cookie} cookie"
                if cookie
                else ("?token= or Authorization: Bearer")
            )
            raise Unauthenticated(
                f"this {'stream' if cookie else 'endpoint'} needs a connection token: {where}"
            )
        return verify_token(self.secret, token, user_id)

    def check_owner(self, request: Request, user_id: str) -> None:
        """Allow ``user_id``'s own token (or the ``authorize`` hook), or a publish key (inbox endpoints).

        Not the token cookie: it is scoped to the stream URLs, and a cookie would let another
        site's form mark a user's notices (cross-site request forgery).

        :raises ~sse_notify.errors.AuthError: 401 without credentials, 403 with wrong ones.
        """
        if not self.enabled:
            return
        bearer = _bearer(request)
        if bearer is not None:
            try:
                check_publish_key(self.publish_keys, bearer)  # constant-time against each key
                return
            except Forbidden:
                pass  # not a publish key: maybe the user's token
        if self._hook_allows(user_id):
            # The hook most likely read a session cookie, which a browser also sends with
            # another site's form: a change must come from this site (or a CORS origin).
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                self._check_same_origin(request)
            return
        self._token_grant(request, user_id, cookie=False)

    def _check_same_origin(self, request: Request) -> None:
        """Refuse (403) a browser request sent from another site.

        ``Origin`` (sent by browsers with every POST) must name this host or a
        CORS origin; without it, ``Sec-Fetch-Site`` must not say another site.
        A client that sends neither is not a browser, so no forgery.
        """
        origin = request.headers.get("Origin")
        if origin is not None:
            if origin in self.origins or urlsplit(origin).netloc == request.host:
                return
            raise Forbidden(f"a change from another site ({origin}) is refused; send it from this site")
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden(f"a change from another site (Sec-Fetch-Site: {site}) is refused")

    def check_publisher(self, request: Request) -> None:
        """Check the publish key and its rate limit.

        :raises ~sse_notify.errors.AuthError: 401 without a key, 403 with a wrong one.
        :raises RateLimited: 429 past the key's rate limit.
        """
        if not self.enabled:
            return
        key = check_publish_key(self.publish_keys, _bearer(request))
        if self._limiter is not None and self.rate is not None:
            ident = key_id(key)
            if not self._limiter.hit(self.rate, ident):
                reset_at = self._limiter.get_window_stats(self.rate, ident).reset_time
                retry_after = max(1, math.ceil(reset_at - time.time()))
                raise RateLimited(
                    f"rate limit of {self.rate} per publish key reached; retry in {retry_after} s",
                    retry_after,
                )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def announce(security: Security, instance_path: str) -> None:
    """Say at start what protects this server (loudly when nothing does)."""
    if not security.enabled:
        log.warning(
            "SSE_NOTIFY_AUTH=none: authentication is OFF. Anyone who can reach this server can read "
            "every user's notices and publish. Use this only on a trusted network."
        )
    elif security.development:
        log.warning(
            "sse_notify is in development mode: the token secret and/or publish key were generated and "
            "kept in %s. Set FLASK_SECRET_KEY and SSE_NOTIFY_PUBLISH_KEYS (and SSE_NOTIFY_PRODUCTION=true) "
            "for production.",
            instance_path,
        )
