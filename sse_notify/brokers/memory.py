"""``memory://``: notices kept in this process only.

For a single process (``flask run``, one gunicorn worker, tests). Nothing
survives a restart and other processes see nothing: use ``sqlite://`` (the
default) for several workers.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections import defaultdict, deque

from ..errors import BrokerError
from ..inbox import InboxState
from ..notices import Notice, utc_iso_ago, utc_now_iso
from .base import BROADCAST_KEY, FeedCallback, Published, Replay, plan_replay, replay_publish

__all__ = ["MemoryBroker"]

log = logging.getLogger("sse_notify.brokers.memory")


class MemoryBroker:
    """In-process store with the same guarantees as the others, minus durability."""

    durable = False

    def __init__(self, *, retention_count: int = 1000, retention_age: float = 7 * 86400) -> None:
        self.retention_count = retention_count
        self.retention_age = retention_age
        self._lock = threading.RLock()
        self._seq = 0
        self._logs: dict[str, deque[Notice]] = defaultdict(deque)
        self._floor: dict[str, int] = defaultdict(int)
        self._callbacks: list[FeedCallback] = []
        self._by_id: dict[int, Notice] = {}
        self._through: dict[str, int] = {}
        self._read: dict[str, dict[int, bool]] = defaultdict(dict)
        self._archived: dict[str, set[int]] = defaultdict(set)
        #: Idempotency key -> (fingerprint, first cursor, created_at, monotonic expiry).
        self._keys: dict[str, tuple[str, int, str, float]] = {}
        #: Presence: worker -> (monotonic expiry, user -> open streams).
        self._workers: dict[str, tuple[float, dict[str, int]]] = {}

    def _append(self, notice: Notice) -> None:
        key = BROADCAST_KEY if notice.user_id is None else notice.user_id
        log = self._logs[key]
        log.append(notice)
        self._by_id[notice.id] = notice
        while len(log) > self.retention_count:
            self._drop(key, log.popleft())

    def _drop(self, key: str, notice: Notice) -> None:
        self._floor[key] = notice.id
        del self._by_id[notice.id]
        users = set(self._read) | set(self._archived) if key == BROADCAST_KEY else {key}
        for user in users:
            self._read.get(user, {}).pop(notice.id, None)
            self._archived.get(user, set()).discard(notice.id)

    def publish(self, user_id: str | None, data_json: str) -> Notice:
        """Store one notice, then announce it."""
        return self.publish_many([(user_id, data_json)])[0]

    def publish_many(self, items: t.Sequence[tuple[str | None, str]]) -> list[Notice]:
        """Store several notices at once, then announce them."""
        if not items:
            return []
        created_at = utc_now_iso()
        with self._lock:
            # Build every notice first, store them only if all are well formed:
            # all or none, as the SQLite transaction does.
            notices = []
            for offset, (user_id, data) in enumerate(items, start=1):
                if not isinstance(data, str) or (user_id is not None and not isinstance(user_id, str)):
                    raise BrokerError(f"notice {offset - 1}: user_id and data_json must be str")
                notices.append(Notice(self._seq + offset, user_id, created_at, data))
            self._seq += len(notices)
            for notice in notices:
                self._append(notice)
            # Announced under the lock so that concurrent publishers' notices
            # reach the feed in cursor order.
            for callback in self._callbacks:
                try:
                    callback(notices)
                except Exception:
                    log.exception("feed callback failed")
        return notices

    def publish_once(
        self, items: t.Sequence[tuple[str | None, str]], key: str, fingerprint: str, ttl: float
    ) -> Published:
        """Store the notices unless ``key`` was used within ``ttl`` seconds."""
        with self._lock:
            found = self._keys.get(key)
            if found is not None and found[3] > time.monotonic():
                return replay_publish(key, fingerprint, found[:3], items)
            notices = self.publish_many(items)
            if notices:
                self._keys[key] = (fingerprint, notices[0].id, notices[0].created_at, time.monotonic() + ttl)
            return Published(notices, False)

    def replay(self, user_id: str, last_event_id: str) -> Replay:
        """The user's notices and the broadcasts after the client's cursor."""
        with self._lock:
            floor = max(self._floor[user_id], self._floor[BROADCAST_KEY])
            cursor, reset = plan_replay(last_event_id, floor, self._seq)
            found = [n for key in (user_id, BROADCAST_KEY) for n in self._logs.get(key, ()) if n.id > cursor]
        found.sort(key=lambda n: n.id)
        return Replay(found, cursor, reset)

    def head(self) -> int:
        """The newest cursor issued."""
        return self._seq

    def subscribe(self, callback: FeedCallback) -> None:
        """Deliver every new notice of this process to ``callback``."""
        with self._lock:
            self._callbacks.append(callback)

    def trim_expired(self) -> int:
        """Drop notices older than the retention age."""
        cutoff = utc_iso_ago(self.retention_age)
        dropped = 0
        with self._lock:
            for key, log in self._logs.items():
                while log and log[0].created_at < cutoff:
                    self._drop(key, log.popleft())
                    dropped += 1
            now = time.monotonic()
            for key in [k for k, record in self._keys.items() if record[3] <= now]:
                del self._keys[key]
        return dropped

    # -- inboxes ----------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's notices and the broadcasts, newest first."""
        with self._lock:
            ids = [n.id for key in (user_id, BROADCAST_KEY) for n in self._logs.get(key, ())]
        ids.sort(reverse=True)
        return ids

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""
        with self._lock:
            found = [self._by_id[seq] for seq in ids if seq in self._by_id]
        return [n for n in found if n.user_id in (user_id, None)]

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks."""
        with self._lock:
            return InboxState(
                self._through.get(user_id, 0),
                dict(self._read.get(user_id, {})),
                frozenset(self._archived.get(user_id, ())),
            )

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set read and/or archived on these notices of the user."""
        with self._lock:
            for seq in ids:
                if read is not None:
                    self._read[user_id][seq] = read
                if archived:
                    self._archived[user_id].add(seq)
                elif archived is not None:
                    self._archived[user_id].discard(seq)

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Everything up to ``through`` is read."""
        with self._lock:
            self._through[user_id] = max(self._through.get(user_id, 0), through)
            marks = self._read.get(user_id, {})
            for seq in [s for s in marks if s <= through]:
                del marks[seq]

    # -- presence -----------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users and renew its lifetime."""
        with self._lock:
            _, mine = self._workers.get(worker, (0.0, {}))
            for user_id, streams in counts.items():
                if streams > 0:
                    mine[user_id] = streams
                else:
                    mine.pop(user_id, None)
            self._workers[worker] = (time.monotonic() + ttl, mine)

    def presence_leave(self, worker: str) -> None:
        """Forget the worker."""
        with self._lock:
            self._workers.pop(worker, None)

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the workers alive."""
        now = time.monotonic()
        found: dict[str, int] = {}
        with self._lock:
            for expires, mine in self._workers.values():
                if expires > now:
                    for user_id in set(user_ids):
                        if user_id in mine:
                            found[user_id] = found.get(user_id, 0) + mine[user_id]
        return found

    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Forget the feed subscribers."""
        with self._lock:
            self._callbacks.clear()
