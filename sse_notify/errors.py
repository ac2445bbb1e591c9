"""Exceptions of sse_notify.

- :class:`SSENotifyError` — base of everything raised here

  - :class:`ConfigError` — a setting is missing or wrong (raised at start)
  - :class:`BrokerError` — the store failed

    - :class:`BrokerUnavailable` — the store cannot be reached (answered 503)

  - :class:`InvalidNotice` — a publish was refused (answered 400)
"""

from __future__ import annotations

__all__ = ["BrokerError", "BrokerUnavailable", "ConfigError", "InvalidNotice", "SSENotifyError"]


class SSENotifyError(Exception):
    """Base class of every error sse_notify raises."""


class ConfigError(SSENotifyError):
    """A setting is missing or has a wrong value."""


class BrokerError(SSENotifyError):
    """The notice store failed."""


class BrokerUnavailable(BrokerError):
    """The notice store cannot be reached right now; try again later."""


class InvalidNotice(SSENotifyError, ValueError):
    """A notice was refused: bad user id or data that is not a JSON object."""
