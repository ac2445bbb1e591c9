"""Settings: every key starts with ``SSE_NOTIFY_``; defaults live here, in one place.

The same keys are read from the environment (``SSE_NOTIFY_HEARTBEAT=5``),
values parsed as JSON when they parse (numbers, ``true``, ``["a", "b"]``), else
kept as text, as Flask's ``Config.from_prefixed_env`` does. (That method strips
the prefix from the key; we keep it, so keys stay namespaced in ``app.config``
as Flask's extension guide asks.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import typing as t
from dataclasses import dataclass, fields

from .auth import MAX_TOKEN_TTL
from .errors import ConfigError
from .notices import EMAIL_ADDRESS

__all__ = ["DEFAULTS", "PREFIX", "Settings", "load_env"]

PREFIX = "SSE_NOTIFY_"

#: An exact browser origin: scheme://host[:port], nothing that a CORS library could read as a pattern.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?")

#: Every setting with its default. The README's table is checked against this.
DEFAULTS: dict[str, t.Any] = {
    "SSE_NOTIFY_BROKER_URL": "sqlite:///sse_notify.sqlite3",
    "SSE_NOTIFY_AUTH": "token",
    "SSE_NOTIFY_PRODUCTION": False,
    "SSE_NOTIFY_PUBLISH_KEYS": [],
    "SSE_NOTIFY_TOKEN_TTL": 3600,
    "SSE_NOTIFY_TOKEN_COOKIE": "sse_notify_token",
    "SSE_NOTIFY_CORS_ORIGINS": [],
    "SSE_NOTIFY_RATE_LIMIT": "1000/second",
    "SSE_NOTIFY_RATE_LIMIT_STORAGE": "memory://",
    "SSE_NOTIFY_MAX_BODY": 65536,
    "SSE_NOTIFY_MAX_BATCH_BODY": 4 << 20,
    "SSE_NOTIFY_MAX_STREAMS_PER_USER": 20,
    "SSE_NOTIFY_MAX_STREAMS": 50000,
    "SSE_NOTIFY_HEARTBEAT": 15.0,
    "SSE_NOTIFY_RETRY": 2000,
    "SSE_NOTIFY_RECONNECT_RATE": 1500,
    "SSE_NOTIFY_RETENTION_COUNT": 1000,
    "SSE_NOTIFY_RETENTION_AGE": 7 * 86400,
    "SSE_NOTIFY_MAX_PENDING": 1 << 20,
    "SSE_NOTIFY_SEND_TIMEOUT": 30.0,
    "SSE_NOTIFY_POLL_INTERVAL": 1.0,
    "SSE_NOTIFY_SWEEP_INTERVAL": 60.0,
    "SSE_NOTIFY_MAX_BATCH": 1000,
    "SSE_NOTIFY_DETACH_STREAMS": True,
    "SSE_NOTIFY_SNAPSHOT": True,
    "SSE_NOTIFY_SNAPSHOT_SIZE": 10,
    "SSE_NOTIFY_INBOX_PAGE_MAX": 100,
    "SSE_NOTIFY_URL_PREFIX": "",
    "SSE_NOTIFY_IDEMPOTENCY_TTL": 86400,
    "SSE_NOTIFY_PRESENCE_INTERVAL": 1.0,
    "SSE_NOTIFY_METRICS": True,
    "SSE_NOTIFY_LOG_FORMAT": "",
    "SSE_NOTIFY_LOG_LEVEL": "WARNING",
    "SSE_NOTIFY_FALLBACK_AFTER": 300.0,
    "SSE_NOTIFY_FALLBACK_DIGEST": 60.0,
    "SSE_NOTIFY_FALLBACK_BACKOFF": 30.0,
    "SSE_NOTIFY_FALLBACK_ATTEMPTS": 8,
    "SSE_NOTIFY_FALLBACK_TIMEOUT": 10.0,
    "SSE_NOTIFY_SMTP_URL": "",
    "SSE_NOTIFY_EMAIL_FROM": "",
    "SSE_NOTIFY_WEBHOOK_URL": "",
    "SSE_NOTIFY_WEBHOOK_SECRET": "",
    "SSE_NOTIFY_PUSH": False,
    "SSE_NOTIFY_VAPID_PRIVATE_KEY": "",
    "SSE_NOTIFY_VAPID_SUBJECT": "",
    "SSE_NOTIFY_PUSH_TTL": 86400,
}

#: Settings whose empty value means "off" (a channel not set up).
_MAY_BE_EMPTY = frozenset(
    {"smtp_url", "email_from", "webhook_url", "webhook_secret", "vapid_private_key", "vapid_subject"}
)
#: ``smtp://`` or ``smtps://`` with a host, optional login, port and ``?starttls=``.
_SMTP = re.compile(r"smtps?://([^@/?#\s]+@)?[^@/?#:\s]+(:[0-9]{1,5})?(\?starttls=(auto|true|false))?")


def load_env(config: t.MutableMapping[str, t.Any], environ: t.Mapping[str, str] | None = None) -> None:
    """Copy ``SSE_NOTIFY_*`` environment variables into ``config``."""
    environ = os.environ if environ is None else environ
    for key in sorted(environ):
        if not key.startswith(PREFIX):
            continue
        value: t.Any = environ[key]
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        config[key] = value


def _text(key: str, raw: t.Any, *, empty: bool = False) -> str:
    if not isinstance(raw, str) or (not raw and not empty):
        raise ConfigError(f"{key} must be a {'' if empty else 'non-empty '}string, got {raw!r}")
    return raw


def _positive(kind: type[int] | type[float]) -> t.Callable[[str, t.Any], t.Any]:
    def parse(key: str, raw: t.Any) -> t.Any:
        if isinstance(raw, bool):
            raise ConfigError(f"{key} must be a positive number, got {raw!r}")
        try:
            number = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {raw!r}") from None
        if number <= 0:
            raise ConfigError(f"{key} must be a positive number, got {raw!r}")
        return number

    return parse


def _flag(key: str, raw: t.Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
        return raw.lower() in {"1", "true", "yes", "on"}
    if raw in (0, 1):
        return bool(raw)
    raise ConfigError(f"{key} must be true or false, got {raw!r}")


def _strings(key: str, raw: t.Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # "a,b" from the environment
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) and v for v in raw):
        raise ConfigError(f"{key} must be a list of non-empty strings (or one comma-separated string)")
    return tuple(raw)


def _auth(key: str, raw: t.Any) -> str:
    if raw not in ("token", "none"):
        raise ConfigError(f'{key} must be "token" or "none", got {raw!r}')
    return t.cast(str, raw)


def _url_prefix(key: str, raw: t.Any) -> str:
    prefix = _text(key, raw, empty=True).rstrip("/")
    if prefix and (not prefix.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix)):
        raise ConfigError(f'{key} must be empty or a path like "/notify", got {raw!r}')
    return prefix


_CHOICES: dict[str, tuple[str, ...]] = {
    "log_format": ("", "text", "json"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}


def _choice(key: str, raw: t.Any, allowed: tuple[str, ...]) -> str:
    value = raw.upper() if isinstance(raw, str) and allowed[-1].isupper() else raw
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(repr(a) for a in allowed)}, got {raw!r}")
    return t.cast(str, value)


_PARSERS: dict[str, t.Callable[[str, t.Any], t.Any]] = {
    "str": _text,
    "int": _positive(int),
    "float": _positive(float),
    "bool": _flag,
    "tuple[str, ...]": _strings,
}


@dataclass(frozen=True)
class Settings:
    """The validated settings of one app."""

    broker_url: str
    auth: str
    production: bool
    publish_keys: tuple[str, ...]
    token_ttl: int
    token_cookie: str
    cors_origins: tuple[str, ...]
    rate_limit: str
    rate_limit_storage: str
    max_body: int
    max_batch_body: int
    max_streams_per_user: int
    max_streams: int
    heartbeat: float
    retry: int
    reconnect_rate: int
    retention_count: int
    retention_age: float
    max_pending: int
    send_timeout: float
    poll_interval: float
    sweep_interval: float
    max_batch: int
    detach_streams: bool
    snapshot: bool
    snapshot_size: int
    inbox_page_max: int
    url_prefix: str
    idempotency_ttl: int
    presence_interval: float
    metrics: bool
    log_format: str
    log_level: str
    fallback_after: float
    fallback_digest: float
    fallback_backoff: float
    fallback_attempts: int
    fallback_timeout: float
    smtp_url: str
    email_from: str
    webhook_url: str
    webhook_secret: str
    push: bool
    vapid_private_key: str
    vapid_subject: str
    push_ttl: int

    @property
    def fallback_channels(self) -> tuple[str, ...]:
        """The channels set up besides ``in_app`` (``email``, ``push``, ``webhook``)."""
        on = {"email": bool(self.smtp_url), "push": self.push, "webhook": bool(self.webhook_url)}
        return tuple(channel for channel, yes in on.items() if yes)

    @classmethod
    def from_config(cls, config: t.Mapping[str, t.Any]) -> Settings:
        """Read and check every ``SSE_NOTIFY_*`` key, falling back to :data:`DEFAULTS`.

        :raises ConfigError: naming the key and what is wrong with it.
        """
        values: dict[str, t.Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name.upper()
            raw = config.get(key, DEFAULTS[key])
            if f.name == "auth":
                values[f.name] = _auth(key, raw)
            elif f.name == "rate_limit":
                values[f.name] = _text(key, raw, empty=True)  # "" turns the limit off
            elif f.name == "url_prefix":
                values[f.name] = _url_prefix(key, raw)
            elif f.name in _MAY_BE_EMPTY:
                values[f.name] = _text(key, raw, empty=True).strip()
            elif f.name in _CHOICES:
                values[f.name] = _choice(key, raw, _CHOICES[f.name])
            else:
                values[f.name] = _PARSERS[str(f.type)](key, raw)
        if values["token_ttl"] > MAX_TOKEN_TTL:
            raise ConfigError(
                f"SSE_NOTIFY_TOKEN_TTL must be at most {MAX_TOKEN_TTL} seconds (30 days), "
                f"got {values['token_ttl']}"
            )
        for origin in values["cors_origins"]:
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"SSE_NOTIFY_CORS_ORIGINS: {origin!r} is not an exact origin. Streams and publishes "
                    "carry credentials, so list each origin as scheme://host[:port] "
                    "(e.g. https://app.example.com); no *, no patterns"
                )
        _check_channels(values)
        return cls(**values)


def _check_channels(values: dict[str, t.Any]) -> None:
    """Each fallback channel's settings, complete and well formed (#15)."""
    smtp = values["smtp_url"]
    if smtp:
        if not _SMTP.fullmatch(smtp):
            raise ConfigError(
                "SSE_NOTIFY_SMTP_URL must look like smtp://user:password@host:587 or "
                "smtps://host:465 (optional ?starttls=auto|true|false)"
            )
        if not EMAIL_ADDRESS.fullmatch(values["email_from"].rpartition("<")[2].rstrip(">")):
            raise ConfigError(
                "SSE_NOTIFY_EMAIL_FROM must be the sender's address (e.g. notices@example.com or "
                '"Example <notices@example.com>") when SSE_NOTIFY_SMTP_URL is set, '
                f"got {values['email_from']!r}"
            )
    hook = values["webhook_url"]
    if hook:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", hook):
            raise ConfigError(f"SSE_NOTIFY_WEBHOOK_URL must be an http:// or https:// URL, got {hook!r}")
        secret = values["webhook_secret"]
        if not re.fullmatch(r"whsec_[A-Za-z0-9+/]{32,}={0,2}", secret):
            raise ConfigError(
                "SSE_NOTIFY_WEBHOOK_SECRET must be set when SSE_NOTIFY_WEBHOOK_URL is: whsec_ and at least "
                '24 random bytes in base64 (make one with: python -c "import base64, os; '
                "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
            )
    if values["push"]:
        subject = values["vapid_subject"]
        if subject and not subject.startswith(("mailto:", "https://")):
            raise ConfigError(f"SSE_NOTIFY_VAPID_SUBJECT must be a mailto: or https:// URL, got {subject!r}")
        if values["production"] and not (values["vapid_private_key"] and subject):
            raise ConfigError(
                "SSE_NOTIFY_PUSH in production needs SSE_NOTIFY_VAPID_PRIVATE_KEY (the path of a PEM "
                "file: `vapid --gen`, installed with sse-notify[push], writes private_key.pem) and "
                "SSE_NOTIFY_VAPID_SUBJECT (mailto:you@example.com)"
            )
