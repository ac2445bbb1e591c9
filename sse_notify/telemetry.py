"""What streams and publishes do, told once: counted in :mod:`.metrics` and logged as structured records.

One function per event, called by the hub, the stream generator and the
publish path. Each log record's facts are fields (``extra``) as well as text,
for ``SSE_NOTIFY_LOG_FORMAT=json``; none holds a token or a notice's data.
Levels: stream open and close and publishes are ``INFO``; evictions, store
failures ``WARNING``.

Counts are tallied in the process and added to the Prometheus values at most
:data:`FLUSH_SECONDS` later (and at once when ``/metrics`` is read, and at
shutdown): in multiprocess mode every Prometheus increment takes a lock and writes
a memory-mapped file, which was about 15 µs of every publish and of every stream
opened (py-spy, ``python -m bench limit``). A tally adds numbers in a dict.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import typing as t

from .concurrency import spawn_later, thread_lock

if t.TYPE_CHECKING:
    from types import ModuleType

    from .notices import Notice

__all__ = [
    "FLUSH_SECONDS",
    "delivered",
    "evicted",
    "fallback_failed",
    "fallback_sent",
    "prepare",
    "published",
    "replayed",
    "store_failed",
    "stream_closed",
    "stream_opened",
]

streams_log = logging.getLogger("sse_notify.streams")
publish_log = logging.getLogger("sse_notify.publish")
store_log = logging.getLogger("sse_notify.store")
fallback_log = logging.getLogger("sse_notify.fallback")

_INFO = logging.INFO

_closed: dict[str, t.Any] = {}
_evicted: dict[str, t.Any] = {}
_published_by_kind: dict[str, t.Any] = {}
_metrics: ModuleType | None = None

#: The longest a count waits in this process before it reaches the Prometheus values.
FLUSH_SECONDS = 0.5


class _Tally:
    """Counts of this process not yet added to the Prometheus values, and the one flush planned."""

    def __init__(self) -> None:
        self.lock: t.Any = None  # made at the first count (gevent's patching decides its kind)
        self.counts: dict[t.Any, float] = {}
        self.buckets: dict[int, int] = {}
        self.seconds = 0.0
        self.planned = False

    def _lock(self) -> t.Any:
        if self.lock is None:
            self.lock = thread_lock()  # a real lock: never held across a switch, never waited on long
        return self.lock

    def add(self, value: t.Any, amount: float = 1) -> None:
        """Add ``amount`` to a Prometheus value (a counter, a labelled child or a gauge)."""
        with self._lock():
            self.counts[value] = self.counts.get(value, 0) + amount
            self._plan()

    def observe(self, seconds: float) -> None:
        """One publish call's time, for the publish histogram."""
        bounds = _publish_bounds()
        with self._lock():
            index = bisect.bisect_left(bounds, seconds)
            self.buckets[index] = self.buckets.get(index, 0) + 1
            self.seconds += seconds
            self._plan()

    def _plan(self) -> None:
        if not self.planned:
            self.planned = True
            spawn_later(FLUSH_SECONDS, self.flush, name="sse-notify-metrics")

    def flush(self) -> None:
        """Add every tallied count to the Prometheus values now."""
        with self._lock():
            counts, self.counts = self.counts, {}
            buckets, self.buckets = self.buckets, {}
            seconds, self.seconds = self.seconds, 0.0
            self.planned = False
        for value, amount in counts.items():
            value.inc(amount)
        if buckets:
            _observe_many(buckets, seconds)


def _publish_bounds() -> list[float]:
    return t.cast("list[float]", (_metrics or _m()).PUBLISH_SECONDS._upper_bounds)


def _observe_many(buckets: dict[int, int], seconds: float) -> None:
    """Add observations to the publish histogram: ``buckets`` counts them by bucket index.

    prometheus_client observes one value at a time; its buckets and sum are the values
    ``observe`` itself increments (private attributes, checked: without them, one
    ``observe`` per value of each bucket's bound keeps the counts right).
    """
    histogram = (_metrics or _m()).PUBLISH_SECONDS
    if hasattr(histogram, "_buckets") and hasattr(histogram, "_sum"):
        for index, count in buckets.items():
            histogram._buckets[index].inc(count)
        histogram._sum.inc(seconds)
        return
    bounds = histogram._upper_bounds
    for index, count in buckets.items():  # pragma: no cover - a prometheus_client without them
        for _ in range(count):
            histogram.observe(min(bounds[index], seconds))


_tally = _Tally()
flush = _tally.flush
atexit.register(flush)


def _m() -> ModuleType:
    """:mod:`.metrics`, imported at the first count: in a gunicorn worker, after
    ``sse_notify.gunicorn_conf`` set the multiprocess directory in the master
    (importing prometheus_client earlier would fix it to one-process mode)."""
    global _metrics
    if _metrics is None:
        from . import metrics

        _metrics = metrics
    return _metrics


def prepare() -> None:
    """Import :mod:`.metrics` now (a node starting in its process), not inside the first stream's request."""
    _m()


def stream_opened(user_id: str, resumed: bool) -> None:
    """A stream joined the hub (``resumed``: it came with a ``Last-Event-ID``)."""
    m = _metrics or _m()
    _tally.add(m.STREAMS_OPEN)
    _tally.add(m.STREAMS_OPENED)
    if resumed:
        _tally.add(m.RECONNECTS)
    if streams_log.isEnabledFor(_INFO):
        streams_log.info(
            "stream of %s opened%s",
            user_id,
            " (resuming)" if resumed else "",
            extra={"event": "stream_open", "user_id": user_id, "resumed": resumed},
        )


def stream_closed(user_id: str, reason: str, seconds: float) -> None:
    """A stream left the hub, for ``reason``, after ``seconds`` open."""
    m = _metrics or _m()
    _tally.add(m.STREAMS_OPEN, -1)
    label = reason.replace(" ", "_")
    counter = _closed.get(label)
    if counter is None:
        counter = _closed[label] = m.STREAMS_CLOSED.labels(label)
    _tally.add(counter)
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
        counter = _evicted[label] = _m().EVICTIONS.labels(label)
    _tally.add(counter)
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
    _tally.add((_metrics or _m()).DELIVERED, count)


def replayed(count: int) -> None:
    """``count`` notice events were sent to a resuming stream from the store."""
    _tally.add(_m().REPLAYED, count)


def _published(kind: str) -> t.Any:
    """The published counter of ``kind`` (looked up once: ``labels()`` takes a lock each call)."""
    counter = _published_by_kind.get(kind)
    if counter is None:
        counter = _published_by_kind[kind] = _m().PUBLISHED.labels(kind)
    return counter


def published(notices: t.Sequence[Notice], seconds: float, *, replayed: bool = False) -> None:
    """A publish call stored ``notices`` in ``seconds`` (``replayed``: an idempotency key matched)."""
    _tally.observe(seconds)
    if not replayed:
        broadcasts = sum(1 for n in notices if n.user_id is None)
        if broadcasts:
            _tally.add(_published("broadcast"), broadcasts)
        if len(notices) > broadcasts:
            _tally.add(_published("user"), len(notices) - broadcasts)
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


def withheld(status: str, user_id: str | None, reason: str | None = None) -> None:
    """A notice for ``user_id`` was not delivered now: ``scheduled``, ``held`` or ``suppressed``."""
    _tally.add(_m().WITHHELD.labels(status))
    if publish_log.isEnabledFor(_INFO):
        publish_log.info(
            "%s a notice for %s%s",
            status,
            user_id or "everyone",
            f" ({reason})" if reason else "",
            extra={"event": "withheld", "status": status, "user_id": user_id, "reason": reason},
        )


def store_failed(operation: str, error: BaseException) -> None:
    """A store operation failed (the caller answers or retries)."""
    _tally.add(_m().STORE_ERRORS.labels(operation))
    store_log.warning(
        "store %s failed: %s",
        operation,
        error,
        extra={"event": "store_error", "operation": operation, "error": str(error)},
    )


def fallback_sent(channel: str, user_id: str, count: int) -> None:
    """A fallback message with ``count`` unread notices went to ``user_id`` on ``channel``."""
    _tally.add(_m().FALLBACK_SENT.labels(channel))
    if fallback_log.isEnabledFor(_INFO):
        fallback_log.info(
            "sent %d unread notice(s) to %s by %s",
            count,
            user_id,
            channel,
            extra={"event": "fallback_sent", "channel": channel, "user_id": user_id, "count": count},
        )


def fallback_failed(channel: str, user_id: str, error: str, retry_in: float | None) -> None:
    """A fallback send to ``user_id`` on ``channel`` failed: tried again in ``retry_in`` s, or given up."""
    metric = _m().FALLBACK_FAILED if retry_in is None else _m().FALLBACK_RETRIED
    _tally.add(metric.labels(channel))
    what = "gave up" if retry_in is None else f"trying again in {retry_in:.0f} s"
    fallback_log.warning(
        "%s to %s failed: %s; %s",
        channel,
        user_id,
        error,
        what,
        extra={
            "event": "fallback_failed",
            "channel": channel,
            "user_id": user_id,
            "error": error,
            "retry_in": retry_in,
        },
    )
