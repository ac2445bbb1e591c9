"""sse_notify: per-user notifications over Server-Sent Events for Flask + gunicorn + gevent."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .app import create_app as create_app
from .brokers import Broker as Broker
from .brokers import MemoryBroker as MemoryBroker
from .brokers import SQLiteBroker as SQLiteBroker
from .brokers import make_broker as make_broker
from .errors import AuthError as AuthError
from .errors import BrokerError as BrokerError
from .errors import BrokerUnavailable as BrokerUnavailable
from .errors import ConfigError as ConfigError
from .errors import InvalidNotice as InvalidNotice
from .errors import InvalidRequest as InvalidRequest
from .errors import InvalidTopic as InvalidTopic
from .errors import InvalidUserId as InvalidUserId
from .errors import SSENotifyError as SSENotifyError
from .extension import SSENotify as SSENotify
from .extension import broadcast as broadcast
from .extension import follow_topic as follow_topic
from .extension import issue_token as issue_token
from .extension import kick as kick
from .extension import notify as notify
from .extension import notify_followers as notify_followers
from .extension import notify_many as notify_many
from .extension import notify_topic as notify_topic
from .extension import presence as presence
from .extension import set_token_cookie as set_token_cookie
from .notices import Notice as Notice
from .presence import Presence as Presence

try:
    __version__ = version("sse-notify")
except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
    __version__ = "0.0.0"

__all__ = [
    "AuthError",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "InvalidNotice",
    "InvalidRequest",
    "InvalidTopic",
    "InvalidUserId",
    "MemoryBroker",
    "Notice",
    "Presence",
    "SQLiteBroker",
    "SSENotify",
    "SSENotifyError",
    "__version__",
    "broadcast",
    "create_app",
    "follow_topic",
    "issue_token",
    "kick",
    "make_broker",
    "notify",
    "notify_followers",
    "notify_many",
    "notify_topic",
    "presence",
    "set_token_cookie",
]
