"""Prometheus metrics of every worker, served by ``GET /metrics``.

The values live in prometheus_client's multiprocess mode whenever
``PROMETHEUS_MULTIPROC_DIR`` is set: each gunicorn worker writes its own
files there, and whichever worker answers ``/metrics`` adds them all up. The
directory must be in the environment before prometheus_client is first
imported, so the repository's ``gunicorn.conf.py`` sets it first thing (and
clears it at start, and drops a dead worker's gauges in ``child_exit``).
Without it (``flask run``, tests in one process) the values are this
process's own.

No label carries a user id: a label per user would grow without bound.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "CONTENT_TYPE",
    "DELIVERED",
    "EVICTIONS",
    "PUBLISHED",
    "PUBLISH_SECONDS",
    "RECONNECTS",
    "REPLAYED",
    "STORE_ERRORS",
    "STREAMS_CLOSED",
    "STREAMS_OPEN",
    "STREAMS_OPENED",
    "multiprocess_dir",
    "render",
    "worker_exited",
]

#: The ``Content-Type`` of :func:`render`'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST

STREAMS_OPEN = Gauge("sse_notify_streams_open", "Event streams open now.", multiprocess_mode="livesum")
STREAMS_OPENED = Counter("sse_notify_streams_opened", "Event streams opened.")
RECONNECTS = Counter(
    "sse_notify_reconnects", "Event streams opened with a Last-Event-ID (a client resuming)."
)
STREAMS_CLOSED = Counter(
    "sse_notify_streams_closed",
    "Event streams closed, by reason (disconnected: the client left).",
    ["reason"],
)
EVICTIONS = Counter(
    "sse_notify_evictions",
    "Streams the server closed or refused: slow_consumer, send_timeout, replaced (per-user limit), "
    "overloaded (per-worker limit), kicked, resync.",
    ["reason"],
)
PUBLISHED = Counter("sse_notify_notices_published", "Notices stored, by kind (user or broadcast).", ["kind"])
WITHHELD = Counter(
    "sse_notify_notices_withheld",
    "Notices not delivered when published or when due: scheduled (send_at, delay), held "
    "(the user's quiet hours), suppressed (a category the user muted).",
    ["status"],
)
DELIVERED = Counter("sse_notify_notices_delivered", "Notice events handed to live streams.")
REPLAYED = Counter("sse_notify_notices_replayed", "Notice events sent from the store to resuming streams.")
PUBLISH_SECONDS = Histogram(
    "sse_notify_publish_seconds",
    "Time to check, store and announce one publish call (one request, batches included).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STORE_ERRORS = Counter(
    "sse_notify_store_errors",
    "Store operations that failed, by operation (publish, replay, snapshot, feed, ping, ...).",
    ["operation"],
)

FALLBACK_SENT = Counter(
    "sse_notify_fallback_sent",
    "Fallback messages sent (a digest of unread notices), by channel (email, push, webhook).",
    ["channel"],
)
FALLBACK_RETRIED = Counter(
    "sse_notify_fallback_retried",
    "Fallback sends that failed and are tried again later, by channel.",
    ["channel"],
)
FALLBACK_FAILED = Counter(
    "sse_notify_fallback_failed",
    "Fallback sends given up (a permanent refusal, or every attempt failed), by channel.",
    ["channel"],
)

# Every label value known in advance starts at 0, so that rate() and increase() see the first one.
for _kind in ("user", "broadcast"):
    PUBLISHED.labels(_kind)
for _status in ("scheduled", "held", "suppressed"):
    WITHHELD.labels(_status)
for _channel in ("email", "push", "webhook"):
    FALLBACK_SENT.labels(_channel)
    FALLBACK_RETRIED.labels(_channel)
    FALLBACK_FAILED.labels(_channel)
for _operation in ("publish", "replay", "snapshot", "head", "subscribe", "presence", "sweep", "ping"):
    STORE_ERRORS.labels(_operation)
for _reason in ("slow_consumer", "send_timeout", "replaced", "overloaded", "kicked", "resync"):
    EVICTIONS.labels(_reason)
for _reason in ("disconnected", "shutdown", "token_expired", "slow_consumer", "send_timeout", "replaced"):
    STREAMS_CLOSED.labels(_reason)
for _reason in ("kicked", "resync"):
    STREAMS_CLOSED.labels(_reason)


def multiprocess_dir() -> str | None:
    """The directory the workers share their values in, if any."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> bytes:
    """Every metric in the Prometheus text format, added up over the workers."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_exited(pid: int) -> None:
    """Drop the live gauges of a worker that exited (gunicorn's ``child_exit`` hook)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
