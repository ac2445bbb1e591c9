"""``memory://``: notices kept in this process only.

For a single process (``flask run``, one gunicorn worker, tests). Nothing
survives a restart and other processes see nothing: use ``sqlite://`` (the
default) for several workers. A forked child starts with an empty store of its
own (its "connection", in :class:`~sse_notify.brokers.base.StoreBase` terms).
"""

from __future__ import annotations

import heapq
import itertools
import time
import typing as t
from collections import defaultdict, deque
from dataclasses import dataclass, field

from ..control import Control
from ..delivery import group_key
from ..inbox import InboxState
from ..notices import Notice, utc_iso_ago, utc_now_iso
from ..schedule import Due, checked_kind
from .base import (
    BROADCAST_KEY,
    FeedHandler,
    Published,
    Replay,
    StoreBase,
    plan_replay,
    replay_publish,
    topic_keys,
)

__all__ = ["MemoryBroker"]


@dataclass
class _Memory:
    """What one process's memory store holds."""

    seq: int = 0
    logs: dict[str, deque[Notice]] = field(default_factory=lambda: defaultdict(deque))
    floor: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_id: dict[int, Notice] = field(default_factory=dict)
    through: dict[str, int] = field(default_factory=dict)
    read: dict[str, dict[int, bool]] = field(default_factory=lambda: defaultdict(dict))
    archived: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    snoozed: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    #: Idempotency key -> (fingerprint, first cursor, created_at, monotonic expiry).
    keys: dict[str, tuple[str, int, str, float]] = field(default_factory=dict)
    #: Presence: worker -> (monotonic expiry, user -> open streams).
    workers: dict[str, tuple[float, dict[str, int]]] = field(default_factory=dict)
    #: The scheduler: (kind, key) -> (due or end of its claim's lease, scheduled due, payload, token).
    entries: dict[tuple[str, str], tuple[float, float, str, int]] = field(default_factory=dict)
    #: (when, kind, key, token) of every entry, earliest first; stale ones are skipped.
    timeline: list[tuple[float, str, str, int]] = field(default_factory=list)
    tokens: t.Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: Users' preferences, as JSON.
    preferences: dict[str, str] = field(default_factory=dict)
    #: (user, group key) -> the id of the group's newest entry.
    groups: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (kind, user) -> name -> text: contacts, push subscriptions.
    records: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


class MemoryBroker(StoreBase[_Memory]):
    """In-process store with the same guarantees as the others, minus durability."""

    durable = False

    def __init__(self, *, retention_count: int = 1000, retention_age: float = 7 * 86400) -> None:
        super().__init__()
        self.retention_count = retention_count
        self.retention_age = retention_age

    def describe(self) -> str:
        """``memory store``."""
        return "memory store"

    def _connect(self) -> _Memory:
        return _Memory()

    def _ping(self, memory: _Memory) -> None:
        """Always reachable."""

    def _start_feed(self, handler: FeedHandler) -> None:
        """Nothing runs: a publish hands its notices to the handler itself."""

    # -- writing ----------------------------------------------------------

    def _append(self, memory: _Memory, notice: Notice) -> None:
        key = notice.key or BROADCAST_KEY
        log = memory.logs[key]
        log.append(notice)
        memory.by_id[notice.id] = notice
        while len(log) > self.retention_count:
            self._drop(memory, key, log.popleft())

    @staticmethod
    def _drop(memory: _Memory, key: str, notice: Notice) -> None:
        memory.floor[key] = notice.id
        del memory.by_id[notice.id]
        users = set(memory.read) | set(memory.archived) if key == BROADCAST_KEY else {key}
        for user in users:
            memory.read.get(user, {}).pop(notice.id, None)
            memory.archived.get(user, set()).discard(notice.id)

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        # Every item is checked before any is stored: all or none, as a transaction is.
        self._check_items(items)
        created_at = utc_now_iso()

        def work(memory: _Memory) -> Published:
            if once is not None:
                found = memory.keys.get(once[0])
                if found is not None and found[3] > time.monotonic():
                    return replay_publish(once[0], once[1], found[:3], items)
            if not items:
                return Published([], False)
            notices = []
            for user_id, data in items:
                memory.seq += 1
                key = group_key(data) if user_id is not None else None
                if user_id is not None and key is not None:
                    data = self._fold_into(memory, user_id, key, memory.seq, data, created_at)
                notice = Notice.stored(memory.seq, user_id, created_at, data)
                self._append(memory, notice)
                notices.append(notice)
            if once is not None:
                memory.keys[once[0]] = (once[1], notices[0].id, created_at, time.monotonic() + once[2])
            # Announced under the lock, so that concurrent publishers' notices reach the feed in
            # cursor order.
            self._deliver(notices)
            return Published(notices, False)

        return self._run(work)

    def publish_control(self, record: Control) -> None:
        """Hand a control record to this process's feed (there is no other process)."""
        self._run(lambda memory: self._deliver([record]))

    def trim_expired(self) -> int:
        """Drop notices older than the retention age."""
        cutoff = utc_iso_ago(self.retention_age)

        def work(memory: _Memory) -> int:
            dropped = 0
            for key, log in memory.logs.items():
                while log and log[0].created_at < cutoff:
                    self._drop(memory, key, log.popleft())
                    dropped += 1
            now = time.monotonic()
            for key in [k for k, record in memory.keys.items() if record[3] <= now]:
                del memory.keys[key]
            return dropped

        return self._run(work)

    # -- reading ----------------------------------------------------------

    def replay(self, user_id: str, last_event_id: str, topics: t.Sequence[str] = ()) -> Replay:
        """The user's notices, the broadcasts and the topics' after the client's cursor."""
        keys = (user_id, BROADCAST_KEY, *topic_keys(topics))

        def work(memory: _Memory) -> Replay:
            floor = max(memory.floor.get(key, 0) for key in keys)
            cursor, reset = plan_replay(last_event_id, floor, memory.seq)
            found = [n for key in keys for n in memory.logs.get(key, ()) if n.id > cursor]
            found.sort(key=lambda n: n.id)
            return Replay(found, cursor, reset)

        return self._run(work)

    def head(self) -> int:
        """The newest cursor issued."""
        return self._run(lambda memory: memory.seq)

    # -- inboxes ----------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's notices and the broadcasts, newest first."""

        def work(memory: _Memory) -> list[int]:
            ids = [n.id for key in (user_id, BROADCAST_KEY) for n in memory.logs.get(key, ())]
            ids.sort(reverse=True)
            return ids

        return self._run(work)

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""

        def work(memory: _Memory) -> list[Notice]:
            found = [memory.by_id[seq] for seq in ids if seq in memory.by_id]
            return [n for n in found if n.user_id == user_id or n.is_broadcast]

        return self._run(work)

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks."""
        return self._run(lambda memory: self._state(memory, user_id))

    @staticmethod
    def _state(memory: _Memory, user_id: str) -> InboxState:
        return InboxState(
            memory.through.get(user_id, 0),
            dict(memory.read.get(user_id, {})),
            frozenset(memory.archived.get(user_id, ())),
            dict(memory.snoozed.get(user_id, {})),
        )

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set read and/or archived on these notices of the user."""

        def work(memory: _Memory) -> None:
            for seq in ids:
                if read is not None:
                    memory.read[user_id][seq] = read
                if archived:
                    memory.archived[user_id].add(seq)
                elif archived is not None:
                    memory.archived[user_id].discard(seq)

        self._run(work)

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Everything up to ``through`` is read."""

        def work(memory: _Memory) -> None:
            memory.through[user_id] = max(memory.through.get(user_id, 0), through)
            marks = memory.read.get(user_id, {})
            for seq in [s for s in marks if s <= through]:
                del marks[seq]

        self._run(work)

    def delete_notices(self, user_id: str, ids: t.Sequence[int]) -> list[int]:
        """Remove these notices of the user's own (not broadcasts); the ids removed."""
        return self._run(lambda memory: self._remove(memory, user_id, ids))

    @staticmethod
    def _remove(memory: _Memory, user_id: str, ids: t.Iterable[int]) -> list[int]:
        wanted = {seq for seq in ids if getattr(memory.by_id.get(seq), "user_id", None) == user_id}
        if wanted:
            log = memory.logs[user_id]
            kept = [n for n in log if n.id not in wanted]
            log.clear()
            log.extend(kept)
            for seq in wanted:
                del memory.by_id[seq]
                memory.read.get(user_id, {}).pop(seq, None)
                memory.archived.get(user_id, set()).discard(seq)
                memory.snoozed.get(user_id, {}).pop(seq, None)
        return sorted(wanted)

    def _fold_into(
        self, memory: _Memory, user_id: str, key: str, seq: int, text: str, created_at: str
    ) -> str:
        """Fold a grouped notice into its group's unread entry (removed); point the group at ``seq``."""
        previous = memory.by_id.get(memory.groups.get((user_id, key), 0))
        if previous is not None and previous.user_id != user_id:
            previous = None
        folded, replaced = self._folded(text, created_at, previous, self._state(memory, user_id))
        if replaced is not None:
            self._remove(memory, user_id, [replaced])
        memory.groups[user_id, key] = seq
        return folded

    def snooze(self, user_id: str, seq: int, until: float) -> None:
        """Snooze the notice until ``until``."""
        self._run(lambda memory: memory.snoozed[user_id].__setitem__(seq, until))

    def wake(self, user_id: str, seq: int, until: float) -> bool:
        """End the snooze if it is still this one, and mark the notice unread."""

        def work(memory: _Memory) -> bool:
            if memory.snoozed.get(user_id, {}).get(seq) != until:
                return False
            del memory.snoozed[user_id][seq]
            memory.read[user_id][seq] = False
            return True

        return self._run(work)

    # -- preferences ------------------------------------------------------------

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The stored preferences of those of these users who set some."""
        return self._run(
            lambda memory: {u: memory.preferences[u] for u in user_ids if u in memory.preferences}
        )

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        return self._run(lambda memory: bool(memory.preferences))

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""
        self._run(lambda memory: memory.preferences.__setitem__(user_id, text))

    # -- users' records (contacts, push subscriptions) -------------------------

    def user_records(self, kind: str, user_id: str) -> dict[str, str]:
        """The user's records of ``kind``, by name."""
        return self._run(lambda memory: dict(memory.records.get((kind, user_id), {})))

    def set_user_record(self, kind: str, user_id: str, name: str, text: str | None) -> bool:
        """Keep (or, with ``None``, forget) one record; whether it existed before."""

        def work(memory: _Memory) -> bool:
            mine = memory.records.setdefault((kind, user_id), {})
            existed = name in mine
            if text is None:
                mine.pop(name, None)
                if not mine:
                    del memory.records[kind, user_id]
            else:
                mine[name] = text
            return existed

        return self._run(work)

    # -- the scheduler --------------------------------------------------------

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each entry until its due time, replacing any of this kind and key."""
        checked_kind(kind)

        def work(memory: _Memory) -> None:
            for key, due, payload in entries:
                token = next(memory.tokens)
                memory.entries[kind, key] = (due, due, payload, token)
                heapq.heappush(memory.timeline, (due, kind, key, token))

        self._run(work)

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry; whether there was one."""
        return self._run(lambda memory: memory.entries.pop((kind, key), None) is not None)

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key, if it waits (claimed or not)."""
        entry = self._run(lambda memory: memory.entries.get((kind, key)))
        return None if entry is None else entry[2]

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` due entries for ``lease`` seconds, the earliest first."""

        def work(memory: _Memory) -> list[Due]:
            taken: list[Due] = []
            timeline = memory.timeline
            while timeline and timeline[0][0] <= now and len(taken) < limit:
                _, kind, key, token = heapq.heappop(timeline)
                entry = memory.entries.get((kind, key))
                if entry is None or entry[3] != token:
                    continue  # forgotten, or scheduled or claimed again since
                claim = next(memory.tokens)
                memory.entries[kind, key] = (now + lease, entry[1], entry[2], claim)
                heapq.heappush(timeline, (now + lease, kind, key, claim))
                taken.append(Due(kind, key, entry[1], entry[2], claim))
            return taken

        return self._run(work)

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget the entries these claims took, where they are still theirs."""

        def work(memory: _Memory) -> None:
            for due in claimed:
                entry = memory.entries.get((due.kind, due.key))
                if entry is not None and entry[3] == due.token:
                    del memory.entries[due.kind, due.key]

        self._run(work)

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait."""
        return self._run(lambda memory: sum(1 for k, _ in memory.entries if k == kind))

    # -- presence -----------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users and renew its lifetime."""

        def work(memory: _Memory) -> None:
            _, mine = memory.workers.get(worker, (0.0, {}))
            for user_id, streams in counts.items():
                if streams > 0:
                    mine[user_id] = streams
                else:
                    mine.pop(user_id, None)
            memory.workers[worker] = (time.monotonic() + ttl, mine)

        self._run(work)

    def presence_leave(self, worker: str) -> None:
        """Forget the worker."""
        self._run(lambda memory: memory.workers.pop(worker, None))

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the workers alive."""

        def work(memory: _Memory) -> dict[str, int]:
            now = time.monotonic()
            found: dict[str, int] = {}
            for expires, mine in memory.workers.values():
                if expires > now:
                    for user_id in set(user_ids):
                        if user_id in mine:
                            found[user_id] = found.get(user_id, 0) + mine[user_id]
            return found

        return self._run(work)
