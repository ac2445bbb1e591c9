"""What streams and publishes do, told once: counted in :mod:`.metrics` and logged as structured records.

One function per event, called by the hub, the stream generator and the
publish path. Each log record's facts are fields (``extra``) as well as text,
for ``SSE_NOTIFY_LOG_FORMAT=json``; none holds a token or a notice's data.
Levels: stream open and close and publishes are ``INFO``; evictions, store
failures ``WARNING``.
"""

from __future__ import annotations

import logging
import typing as t

from . import metrics

if t.TYPE_CHECKING:
    from .notices import Notice

__all__ = [
    "delivered",
    "evicted",
    "published",
    "replayed",
    "store_failed",
    "stream_closed",
    "stream_opened",
]

streams_log = logging.getLogger("sse_notify.streams")
publish_log = logging.getLogger("sse_notify.publish")
store_log = logging.getLogger("sse_notify.store")

_INFO = logging.INFO

_open_gauge = metrics.STREAMS_OPEN
_opened = metrics.STREAMS_OPENED
_reconnects = metrics.RECONNECTS
_closed: dict[str, t.Any] = {}
_evicted: dict[str, t.Any] = {}


def stream_opened(user_id: str, resumed: bool) -> None:
    """A stream joined the hub (``resumed``: it came with a ``Last-Event-ID``)."""
    _open_gauge.inc()
    _opened.inc()
    if resumed:
        _reconnects.inc()
    if streams_log.isEnabledFor(_INFO):
        streams_log.info(
            "stream of %s opened%s",
            user_id,
            " (resuming)" if resumed else "",
            extra={"event": "stream_open", "user_id": user_id, "resumed": resumed},
        )


def stream_closed(user_id: str, reason: str, seconds: float) -> None:
    """A stream left the hub, for ``reason``, after ``seconds`` open."""
    _open_gauge.dec()
    label = reason.replace(" ", "_")
    counter = _closed.get(label)
    if counter is None:
        counter = _closed[label] = metrics.STREAMS_CLOSED.labels(label)
    counter.inc()
    if streams_log.isEnabledFor(_INFO):
        streams_log.info(
            "stream of %s closed: %s after %.1f s",
            user_id,
            reason,
            seconds,
            extra={
                "event": "stream_close",
                "user_id": user_id,
                "reason": label,
                "seconds": round(seconds, 3),
            },
        )


def evicted(user_id: str, reason: str) -> None:
    """The server closed (or refused) a stream of ``user_id``: slow consumer, a limit, a kick..."""
    label = reason.replace(" ", "_")
    counter = _evicted.get(label)
    if counter is None:
        counter = _evicted[label] = metrics.EVICTIONS.labels(label)
    counter.inc()
    level = _INFO if label in {"kicked", "replaced"} else logging.WARNING
    streams_log.log(
        level,
        "evicting a stream of %s: %s",
        user_id,
        reason,
        extra={"event": "eviction", "user_id": user_id, "reason": label},
    )


def delivered(count: int) -> None:
    """``count`` notice events were handed to live streams."""
    metrics.DELIVERED.inc(count)


def replayed(count: int) -> None:
    """``count`` notice events were sent to a resuming stream from the store."""
    metrics.REPLAYED.inc(count)


def published(notices: t.Sequence[Notice], seconds: float, *, replayed: bool = False) -> None:
    """A publish call stored ``notices`` in ``seconds`` (``replayed``: an idempotency key matched)."""
    metrics.PUBLISH_SECONDS.observe(seconds)
    if not replayed:
        broadcasts = sum(1 for n in notices if n.user_id is None)
        if broadcasts:
            metrics.PUBLISHED.labels("broadcast").inc(broadcasts)
        if len(notices) > broadcasts:
            metrics.PUBLISHED.labels("user").inc(len(notices) - broadcasts)
    if publish_log.isEnabledFor(_INFO) and notices:
        users = {n.user_id for n in notices}
        to = f"{len(users)} users" if len(users) > 1 else notices[0].user_id or "everyone"
        publish_log.info(
            "%s %d notice%s for %s (ids %d-%d) in %.1f ms",
            "replayed" if replayed else "published",
            len(notices),
            "" if len(notices) == 1 else "s",
            to,
            notices[0].id,
            notices[-1].id,
            seconds * 1000,
            extra={
                "event": "publish",
                "to": to,
                "count": len(notices),
                "first_id": notices[0].id,
                "last_id": notices[-1].id,
                "replayed": replayed,
                "seconds": round(seconds, 6),
            },
        )


def store_failed(operation: str, error: BaseException) -> None:
    """A store operation failed (the caller answers or retries)."""
    metrics.STORE_ERRORS.labels(operation).inc()
    store_log.warning(
        "store %s failed: %s",
        operation,
        error,
        extra={"event": "store_error", "operation": operation, "error": str(error)},
    )
