"""Settings: every key starts with ``SSE_NOTIFY_``; defaults live here, in one place.

The same keys are read from the environment (``SSE_NOTIFY_HEARTBEAT=5``),
values parsed as JSON when they parse (numbers, ``true``), else kept as text,
as Flask's ``Config.from_prefixed_env`` does. (That method strips the prefix
from the key; we keep it, so keys stay namespaced in ``app.config`` as Flask's
extension guide asks.)
"""

from __future__ import annotations

import contextlib
import json
import os
import typing as t
from dataclasses import dataclass, fields

from .errors import ConfigError

__all__ = ["DEFAULTS", "PREFIX", "Settings", "load_env"]

PREFIX = "SSE_NOTIFY_"

#: Every setting with its default. The README's table is checked against this.
DEFAULTS: dict[str, t.Any] = {
    "SSE_NOTIFY_BROKER_URL": "sqlite:///sse_notify.sqlite3",
    "SSE_NOTIFY_HEARTBEAT": 15.0,
    "SSE_NOTIFY_RETRY": 2000,
    "SSE_NOTIFY_RETENTION_COUNT": 1000,
    "SSE_NOTIFY_RETENTION_AGE": 7 * 86400,
    "SSE_NOTIFY_MAX_PENDING": 1 << 20,
    "SSE_NOTIFY_SEND_TIMEOUT": 30.0,
    "SSE_NOTIFY_POLL_INTERVAL": 1.0,
    "SSE_NOTIFY_SWEEP_INTERVAL": 60.0,
    "SSE_NOTIFY_MAX_BATCH": 1000,
}


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


@dataclass(frozen=True)
class Settings:
    """The validated settings of one app."""

    broker_url: str
    heartbeat: float
    retry: int
    retention_count: int
    retention_age: float
    max_pending: int
    send_timeout: float
    poll_interval: float
    sweep_interval: float
    max_batch: int

    @classmethod
    def from_config(cls, config: t.Mapping[str, t.Any]) -> Settings:
        """Read and check every ``SSE_NOTIFY_*`` key, falling back to :data:`DEFAULTS`.

        :raises ConfigError: naming the key and what is wrong with it.
        """
        values: dict[str, t.Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name.upper()
            raw = config.get(key, DEFAULTS[key])
            kind = {"str": str, "int": int, "float": float}[str(f.type)]
            if kind is str:
                if not isinstance(raw, str) or not raw:
                    raise ConfigError(f"{key} must be a non-empty string, got {raw!r}")
                values[f.name] = raw
                continue
            try:
                number = kind(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {raw!r}") from None
            if isinstance(raw, bool) or number <= 0:
                raise ConfigError(f"{key} must be a positive number, got {raw!r}")
            values[f.name] = number
        return cls(**values)
