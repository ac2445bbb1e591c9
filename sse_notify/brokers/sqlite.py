"""``sqlite:///path``: the default store, an embedded SQLite file.

Durable and shared by every process on one host, with no server to install:
``gunicorn -w 4`` workers all read and write the same file (WAL mode, so
readers never block the writer). Cursors come from one ``AUTOINCREMENT``
column, so they follow commit order across processes and are never reused.

Each process keeps one connection, opened lazily after gunicorn forks. Its
feed is one background greenlet (or thread) that sleeps on a
:class:`~sse_notify.brokers.wakeup.WakeChannel` and, when woken, reads the rows
after the last cursor it announced: one query per wake-up per process, never
one per connection.

SQLite calls do not yield to gevent. They are short (a publish is one small
transaction); ``busy_timeout`` covers the moments when another worker holds
the write lock.

A process with a feed (a server worker) also runs one OS thread that
checkpoints the WAL into the database file every
:data:`CHECKPOINT_INTERVAL` seconds, so a publish only appends to the WAL: the
page copies and the ``fsync`` of a checkpoint stay off the request path (with
SQLite's automatic checkpoint they were about half of a batched publish's
commit). SQLite releases the GIL while it works, so that thread runs beside the
event loop. Commits still checkpoint by themselves past
:data:`AUTOCHECKPOINT_PAGES` pages, in case that thread falls behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
import typing as t

from ..concurrency import Batcher, Task, pid, spawn, start_thread, thread_lock
from ..control import Control
from ..delivery import group_key
from ..errors import BrokerError, BrokerUnavailable, IdempotencyKeyReused
from ..inbox import InboxState
from ..notices import Notice, dumps, utc_iso_ago, utc_now_iso
from ..schedule import Due, checked_kind
from .base import (
    BROADCAST_KEY,
    CONTROL_KEY,
    FeedHandler,
    Item,
    Published,
    Replay,
    StoreBase,
    plan_replay,
    replay_publish,
    stored_item,
)
from .wakeup import WakeChannel

__all__ = ["SQLiteBroker"]

log = logging.getLogger("sse_notify.brokers.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notices_by_user ON notices (user_id, seq);
CREATE INDEX IF NOT EXISTS notices_by_age ON notices (created_at);
CREATE TABLE IF NOT EXISTS trimmed (
    user_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox_marks (
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    read INTEGER,
    archived INTEGER NOT NULL DEFAULT 0,
    snoozed REAL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_through (
    user_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS presence (
    user_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    streams INTEGER NOT NULL,
    PRIMARY KEY (user_id, worker)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS presence_workers (
    worker TEXT PRIMARY KEY,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scheduled (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    due REAL NOT NULL,
    scheduled_for REAL NOT NULL,
    payload TEXT NOT NULL,
    token INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scheduled_by_due ON scheduled (due);
CREATE TABLE IF NOT EXISTS groups (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS preferences (
    user_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_records (
    kind TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, user_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    first INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
"""

_FEED_BATCH = 1000

_KEY_FOUND = "SELECT fingerprint, first, created_at FROM idempotency WHERE key = ? AND expires > ?"

#: A publish request: its ``(user_id, data_json)`` items, and its ``(key, fingerprint, ttl)`` if any.
_Request = tuple[t.Sequence[tuple[str | None, str]], tuple[str, str, float] | None]

#: Seconds between the WAL checkpoints of a process that has a feed.
CHECKPOINT_INTERVAL = 0.1
#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1000).
AUTOCHECKPOINT_PAGES = 10000

_TRIM_CUTS = """
SELECT key, (SELECT seq FROM notices WHERE user_id = key ORDER BY seq DESC LIMIT 1 OFFSET ?)
FROM (SELECT value AS key FROM json_each(?))
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store made by an earlier version up to this one's schema (each step once)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(inbox_marks)")}
    if "snoozed" not in columns:  # 0.1.0: no snooze
        try:
            db.execute("ALTER TABLE inbox_marks ADD COLUMN snoozed REAL")
        except sqlite3.OperationalError as exc:  # another worker added it first
            if "duplicate column" not in str(exc):
                raise


def _row_notice(row: tuple[int, str, str, str]) -> Notice:
    seq, user_id, created_at, data = row
    return Notice.stored(seq, None if user_id == BROADCAST_KEY else user_id, created_at, data)


def _row_item(row: tuple[int, str, str, str]) -> Item | None:
    return stored_item(*row)


class SQLiteBroker(StoreBase[sqlite3.Connection]):
    """Notices in one SQLite file, shared by every process on the host."""

    durable = True
    unavailable_errors = (sqlite3.OperationalError, OSError)
    failure_errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str,
        *,
        retention_count: int = 1000,
        retention_age: float = 7 * 86400,
        poll_interval: float = 1.0,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        super().__init__()
        self.path = os.path.abspath(path)
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.poll_interval = poll_interval
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._wake = WakeChannel(self.path)
        # This process's feed: what it delivered last. Guarded by _feed_lock, so the
        # feed and a local publish never deliver at once.
        self._feed_lock = threading.Lock()
        self._feed_cursor = 0
        self._feed_task: Task | None = None
        #: Publishes of this worker that arrive together share one transaction (gevent only).
        self._commits: Batcher[_Request, Published] = Batcher(self._commit)
        # Released to stop the checkpoint thread, and by it when it has closed its connection.
        self._checkpoints_stop = thread_lock()
        self._checkpoints_done = thread_lock()

    def _forked(self) -> None:
        super()._forked()
        self._feed_lock = threading.Lock()
        self._feed_task = None
        self._commits = Batcher(self._commit)  # (the checkpoint thread's locks are made at subscribe)

    def describe(self) -> str:
        """``SQLite store /path``."""
        return f"SQLite store {self.path}"

    # -- connection -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                # Workers opening a new file together: switching it to WAL takes a lock
                # that SQLite's busy handler does not wait for. Try again shortly.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.executescript(SCHEMA)
            _migrate(db)
            if self._feeding:
                db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        except BaseException:
            db.close()
            raise
        return db

    def _failed(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            db.execute("ROLLBACK")

    def _disconnect(self, db: sqlite3.Connection) -> None:
        db.close()
        self._wake.close()

    def _ping(self, db: sqlite3.Connection) -> None:
        db.execute("SELECT 1").fetchone()

    # -- writing ----------------------------------------------------------

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        if not items:
            return Published([], False)
        return self._commits.submit((items, once))

    def publish_requests(self, requests: t.Sequence[_Request]) -> list[Published | BaseException]:
        """Several publishes in one transaction (a request that fails alone gets its error)."""
        live = [(items, once) for items, once in requests if items]
        results = iter(self._commit(live) if live else [])
        return [next(results) if items else Published([], False) for items, _ in requests]

    def _commit(self, requests: list[_Request]) -> list[Published | BaseException]:
        """Store the publish requests of one batch in one transaction, then announce them.

        A request that fails alone (a key reused for another request) gets its own error. If
        the transaction fails, each request of a batch of several is tried again alone, so that
        one bad request does not fail the others.
        """
        try:
            results = self._run(lambda db: self._store(db, requests))
        except BrokerUnavailable as exc:
            return [exc] * len(requests)
        except BrokerError as exc:
            if len(requests) == 1:
                return [exc]
            return [result for request in requests for result in self._commit([request])]
        stored = [
            n
            for result in results
            if isinstance(result, Published) and not result.replayed
            for n in result.notices
        ]
        if stored:
            delivered = self._deliver_here(stored)
            self._wake.wake_all(skip_own=delivered)
        return results

    def _store(self, db: sqlite3.Connection, requests: list[_Request]) -> list[Published | BaseException]:
        """Write the requests' notices (and keys) in one transaction."""
        created_at = utc_now_iso()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        # The write lock is ours: the next cursors are the last one issued plus 1, 2, ...
        # (explicit values raise AUTOINCREMENT's counter, so none is ever reused).
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'notices'").fetchone()
        seq = int(row[0]) if row else 0
        results: list[Published | BaseException] = []
        rows: list[tuple[int, str, str, str]] = []
        touched: dict[str, None] = {}  # the keys (users, "*", "!") of the rows, for trimming
        keys: dict[str, tuple[str, int, str, float]] = {}
        for items, once in requests:
            if once is not None:
                key, fingerprint, ttl = once
                earlier = keys.get(key)  # the same key twice in one batch: the first one stores
                found = earlier[:3] if earlier else db.execute(_KEY_FOUND, (key, now)).fetchone()
                if found is not None:
                    try:
                        results.append(replay_publish(key, fingerprint, found, items))
                    except IdempotencyKeyReused as exc:
                        results.append(exc)
                    continue
                keys[key] = (fingerprint, seq + 1, created_at, now + ttl)
            notices = []
            for user, data in items:
                seq += 1
                group = group_key(data) if user is not None else None
                if user is not None and group is not None:
                    # Folded in this transaction: what earlier requests of it stored must be in the table.
                    self._insert(db, rows)
                    data = self._fold_into(db, user, group, seq, data, created_at)
                notices.append(Notice.stored(seq, user, created_at, data))
                rows.append((seq, BROADCAST_KEY if user is None else user, created_at, notices[-1].text))
                touched[rows[-1][1]] = None
            results.append(Published(notices, False))
        self._insert(db, rows)
        if touched:
            self._trim_users(db, list(touched))
        if keys:
            db.executemany(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                [(key, *record) for key, record in keys.items()],
            )
        db.execute("COMMIT")
        return results

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple[int, str, str, str]]) -> None:
        """Insert the rows (and empty the list)."""
        if rows:
            db.executemany("INSERT INTO notices (seq, user_id, created_at, data) VALUES (?, ?, ?, ?)", rows)
            rows.clear()

    def _fold_into(
        self, db: sqlite3.Connection, user: str, key: str, seq: int, text: str, created_at: str
    ) -> str:
        """Fold a grouped notice into its group's unread entry (deleted); point the group at ``seq``."""
        row = db.execute(
            "SELECT n.seq, n.created_at, n.data FROM groups AS g JOIN notices AS n "
            "ON n.seq = g.seq AND n.user_id = g.user_id WHERE g.user_id = ? AND g.key = ?",
            (user, key),
        ).fetchone()
        previous = state = None
        if row is not None:
            previous = Notice.stored(row[0], user, row[1], row[2])
            (through,) = db.execute(
                "SELECT coalesce(max(seq), 0) FROM inbox_through WHERE user_id = ?", (user,)
            ).fetchone()
            mark = db.execute(
                "SELECT read, archived FROM inbox_marks WHERE user_id = ? AND seq = ?", (user, previous.id)
            ).fetchone()
            read = {} if mark is None or mark[0] is None else {previous.id: bool(mark[0])}
            archived = frozenset([previous.id]) if mark is not None and mark[1] else frozenset()
            state = InboxState(through, read, archived)
        folded, replaced = self._folded(text, created_at, previous, state)
        if replaced is not None:
            db.execute("DELETE FROM notices WHERE seq = ?", (replaced,))
            db.execute("DELETE FROM inbox_marks WHERE user_id = ? AND seq = ?", (user, replaced))
        db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?)", (user, key, seq))
        return folded

    def publish_control(self, record: Control) -> None:
        """Store a control record among the notices (never replayed), then announce it."""
        self._publish([(CONTROL_KEY, record.to_json())], None)

    def _deliver_here(self, stored: list[Notice]) -> bool:
        """Hand what this process just stored to its own feed, if nothing can be out of order.

        That is when it comes right after what the feed delivered last (no other
        process committed in between) and holds no broadcast (whose fan-out could
        make the publisher wait). It saves the feed's wake-up and read-back on the
        worker that published; every other case, and every other process, goes
        through the feed.
        """
        if not self._feeding or any(n.user_id is None for n in stored):
            return False
        if not self._feed_lock.acquire(blocking=False):
            return False
        try:
            if stored[0].id != self._feed_cursor + 1:
                return False
            self._feed_cursor = stored[-1].id
            self._deliver([stored_item(n.id, t.cast(str, n.user_id), n.created_at, n.text) for n in stored])
            return True
        finally:
            self._feed_lock.release()

    def _trim_users(self, db: sqlite3.Connection, keys: list[str]) -> None:
        """Keep each user's newest ``retention_count`` notices (one query finds who is over)."""
        cuts = db.execute(_TRIM_CUTS, (self.retention_count, dumps(keys))).fetchall()
        for key, cut in cuts:
            if cut is not None:
                db.execute("DELETE FROM notices WHERE user_id = ? AND seq <= ?", (key, cut))
                self._raise_floor(db, key, cut)
                if key != BROADCAST_KEY:
                    db.execute("DELETE FROM inbox_marks WHERE user_id = ? AND seq <= ?", (key, cut))

    @staticmethod
    def _raise_floor(db: sqlite3.Connection, key: str, seq: int) -> None:
        db.execute(
            "INSERT INTO trimmed (user_id, seq) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            (key, seq),
        )

    def trim_expired(self) -> int:
        """Drop notices older than the retention age; remember what each user lost."""
        cutoff = utc_iso_ago(self.retention_age)

        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT user_id, max(seq), count(*) FROM notices WHERE created_at < ? GROUP BY user_id",
                (cutoff,),
            ).fetchall()
            for key, seq, _ in rows:
                db.execute("DELETE FROM notices WHERE user_id = ? AND seq <= ?", (key, seq))
                self._raise_floor(db, key, seq)
            # Marks of notices no longer stored (broadcasts trimmed by count included).
            db.execute(
                "DELETE FROM inbox_marks WHERE NOT EXISTS (SELECT 1 FROM notices WHERE seq = inbox_marks.seq)"
            )
            db.execute("DELETE FROM idempotency WHERE expires <= ?", (time.time(),))
            db.execute("COMMIT")
            return sum(count for _, _, count in rows)

        dropped: int = self._run(work)
        return dropped

    # -- reading ----------------------------------------------------------

    def head(self) -> int:
        """The newest cursor ever issued (AUTOINCREMENT never reuses one)."""
        row = self._run(
            lambda db: db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'notices'").fetchone()
        )
        return int(row[0]) if row else 0

    def replay(self, user_id: str, last_event_id: str) -> Replay:
        """The user's notices and the broadcasts after the client's cursor."""

        def work(db: sqlite3.Connection) -> Replay:
            db.execute("BEGIN")  # one snapshot for the checks and the rows
            try:
                (floor,) = db.execute(
                    "SELECT coalesce(max(seq), 0) FROM trimmed WHERE user_id IN (?, ?)",
                    (user_id, BROADCAST_KEY),
                ).fetchone()
                row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'notices'").fetchone()
                cursor, reset = plan_replay(last_event_id, floor, int(row[0]) if row else 0)
                rows = db.execute(
                    "SELECT seq, user_id, created_at, data FROM notices "
                    "WHERE user_id IN (?, ?) AND seq > ? ORDER BY seq",
                    (user_id, BROADCAST_KEY, cursor),
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return Replay([_row_notice(r) for r in rows], cursor, reset)

        replay: Replay = self._run(work)
        return replay

    def _after(self, cursor: int) -> list[tuple[int, str, str, str]]:
        rows: list[tuple[int, str, str, str]] = self._run(
            lambda db: db.execute(
                "SELECT seq, user_id, created_at, data FROM notices WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, _FEED_BATCH),
            ).fetchall()
        )
        return rows

    # -- inboxes ----------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's notices and the broadcasts, newest first (from the index alone)."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT seq FROM notices WHERE user_id IN (?, ?) ORDER BY seq DESC", (user_id, BROADCAST_KEY)
            ).fetchall()
        )
        return [seq for (seq,) in rows]

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""
        if not ids:
            return []
        rows = self._run(
            lambda db: db.execute(
                "SELECT seq, user_id, created_at, data FROM notices "
                "WHERE seq IN (SELECT value FROM json_each(?)) AND user_id IN (?, ?)",
                (dumps(list(ids)), user_id, BROADCAST_KEY),
            ).fetchall()
        )
        found = {row[0]: _row_notice(row) for row in rows}
        return [found[seq] for seq in ids if seq in found]

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks (one snapshot)."""

        def work(db: sqlite3.Connection) -> InboxState:
            db.execute("BEGIN")
            try:
                row = db.execute("SELECT seq FROM inbox_through WHERE user_id = ?", (user_id,)).fetchone()
                marks = db.execute(
                    "SELECT seq, read, archived, snoozed FROM inbox_marks WHERE user_id = ?", (user_id,)
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return InboxState(
                row[0] if row else 0,
                {seq: bool(read) for seq, read, _, _ in marks if read is not None},
                frozenset(seq for seq, _, archived, _ in marks if archived),
                {seq: float(snoozed) for seq, _, _, snoozed in marks if snoozed is not None},
            )

        state: InboxState = self._run(work)
        return state

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set read and/or archived on these notices of the user, in one transaction."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            if read is not None:
                db.executemany(
                    "INSERT INTO inbox_marks (user_id, seq, read) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id, seq) DO UPDATE SET read = excluded.read",
                    [(user_id, seq, int(read)) for seq in ids],
                )
            if archived is not None:
                db.executemany(
                    "INSERT INTO inbox_marks (user_id, seq, archived) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id, seq) DO UPDATE SET archived = excluded.archived",
                    [(user_id, seq, int(archived)) for seq in ids],
                )
            db.execute("COMMIT")

        self._run(work)

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Everything up to ``through`` is read: move the user's cursor, drop read marks below it."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO inbox_through (user_id, seq) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET seq = max(seq, excluded.seq)",
                (user_id, through),
            )
            db.execute(
                "UPDATE inbox_marks SET read = NULL WHERE user_id = ? AND seq <= ?", (user_id, through)
            )
            db.execute("COMMIT")

        self._run(work)

    def delete_notices(self, user_id: str, ids: t.Sequence[int]) -> list[int]:
        """Remove these notices of the user's own (not broadcasts), with their marks; the ids removed."""

        def work(db: sqlite3.Connection) -> list[int]:
            db.execute("BEGIN IMMEDIATE")
            found = db.execute(
                "SELECT seq FROM notices WHERE user_id = ? AND seq IN (SELECT value FROM json_each(?))",
                (user_id, dumps(list(ids))),
            ).fetchall()
            removed = dumps([seq for (seq,) in found])
            for table in ("notices", "inbox_marks"):
                db.execute(
                    f"DELETE FROM {table} WHERE user_id = ? AND seq IN (SELECT value FROM json_each(?))",
                    (user_id, removed),
                )
            db.execute("COMMIT")
            return sorted(seq for (seq,) in found)

        return self._run(work)

    def snooze(self, user_id: str, seq: int, until: float) -> None:
        """Snooze the notice until ``until``."""
        self._run(
            lambda db: db.execute(
                "INSERT INTO inbox_marks (user_id, seq, snoozed) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, seq) DO UPDATE SET snoozed = excluded.snoozed",
                (user_id, seq, until),
            )
        )

    def wake(self, user_id: str, seq: int, until: float) -> bool:
        """End the snooze if it is still this one, and mark the notice unread (one statement)."""
        cursor = self._run(
            lambda db: db.execute(
                "UPDATE inbox_marks SET snoozed = NULL, read = 0 "
                "WHERE user_id = ? AND seq = ? AND snoozed = ?",
                (user_id, seq, until),
            )
        )
        return bool(cursor.rowcount)

    # -- preferences --------------------------------------------------------

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The stored preferences of those of these users who set some (one query)."""
        if len(user_ids) == 1:  # the usual case, without json_each
            rows = self._run(
                lambda db: db.execute(
                    "SELECT user_id, body FROM preferences WHERE user_id = ?", (user_ids[0],)
                ).fetchall()
            )
        else:
            rows = self._run(
                lambda db: db.execute(
                    "SELECT user_id, body FROM preferences WHERE user_id IN (SELECT value FROM json_each(?))",
                    (dumps(list(user_ids)),),
                ).fetchall()
            )
        return dict(rows)

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        return self._run(lambda db: db.execute("SELECT 1 FROM preferences LIMIT 1").fetchone()) is not None

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""
        self._run(lambda db: db.execute("INSERT OR REPLACE INTO preferences VALUES (?, ?)", (user_id, text)))

    # -- users' records (contacts, push subscriptions) -----------------------

    def user_records(self, kind: str, user_id: str) -> dict[str, str]:
        """The user's records of ``kind``, by name."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT name, body FROM user_records WHERE kind = ? AND user_id = ?", (kind, user_id)
            ).fetchall()
        )
        return {str(name): str(body) for name, body in rows}

    def set_user_record(self, kind: str, user_id: str, name: str, text: str | None) -> bool:
        """Keep (or, with ``None``, forget) one record; whether it existed before (one transaction)."""

        def work(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            where = (kind, user_id, name)
            existed = (
                db.execute(
                    "SELECT 1 FROM user_records WHERE kind = ? AND user_id = ? AND name = ?", where
                ).fetchone()
                is not None
            )
            if text is None:
                db.execute("DELETE FROM user_records WHERE kind = ? AND user_id = ? AND name = ?", where)
            else:
                db.execute("INSERT OR REPLACE INTO user_records VALUES (?, ?, ?, ?)", (*where, text))
            db.execute("COMMIT")
            return existed

        return self._run(work)

    # -- presence -----------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users, renew its lifetime, drop dead workers' rows."""

        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO presence_workers VALUES (?, ?)", (worker, now + ttl))
            db.executemany(
                "INSERT OR REPLACE INTO presence VALUES (?, ?, ?)",
                [(user_id, worker, n) for user_id, n in counts.items() if n > 0],
            )
            db.executemany(
                "DELETE FROM presence WHERE user_id = ? AND worker = ?",
                [(user_id, worker) for user_id, n in counts.items() if n <= 0],
            )
            dead = [
                row[0] for row in db.execute("SELECT worker FROM presence_workers WHERE expires <= ?", (now,))
            ]
            if dead:
                db.executemany("DELETE FROM presence WHERE worker = ?", [(w,) for w in dead])
                db.executemany("DELETE FROM presence_workers WHERE worker = ?", [(w,) for w in dead])
            db.execute("COMMIT")

        self._run(work)

    # -- the scheduler (``due`` is when it falls due: as scheduled, or its claim's lease end) --

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each entry until its due time, replacing any of this kind and key (one transaction)."""
        checked_kind(kind)
        rows = [(kind, key, due, due, payload, secrets.randbits(62)) for key, due, payload in entries]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO scheduled VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")

        if rows:
            self._run(work)

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry; whether there was one."""
        cursor = self._run(
            lambda db: db.execute("DELETE FROM scheduled WHERE kind = ? AND key = ?", (kind, key))
        )
        return bool(cursor.rowcount)

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key, if it waits (claimed or not)."""
        row = self._run(
            lambda db: db.execute(
                "SELECT payload FROM scheduled WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` due entries for ``lease`` seconds, the earliest first (one transaction)."""

        def work(db: sqlite3.Connection) -> list[Due]:
            # Every worker asks several times a second: only take the write lock (which
            # publishes wait for) when something is due.
            if db.execute("SELECT 1 FROM scheduled WHERE due <= ? LIMIT 1", (now,)).fetchone() is None:
                return []
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT kind, key, scheduled_for, payload FROM scheduled WHERE due <= ? ORDER BY due LIMIT ?",
                (now, limit),
            ).fetchall()
            taken = [Due(kind, key, due, payload, secrets.randbits(62)) for kind, key, due, payload in rows]
            db.executemany(
                "UPDATE scheduled SET due = ?, token = ? WHERE kind = ? AND key = ?",
                [(now + lease, d.token, d.kind, d.key) for d in taken],
            )
            db.execute("COMMIT")
            return taken

        return self._run(work)

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget the entries these claims took, where they are still theirs."""
        if not claimed:
            return

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "DELETE FROM scheduled WHERE kind = ? AND key = ? AND token = ?",
                [(d.kind, d.key, d.token) for d in claimed],
            )
            db.execute("COMMIT")

        self._run(work)

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait."""
        row = self._run(
            lambda db: db.execute("SELECT count(*) FROM scheduled WHERE kind = ?", (kind,)).fetchone()
        )
        return int(row[0])

    def presence_leave(self, worker: str) -> None:
        """Forget the worker and its rows."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM presence WHERE worker = ?", (worker,))
            db.execute("DELETE FROM presence_workers WHERE worker = ?", (worker,))
            db.execute("COMMIT")

        self._run(work)

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the workers alive."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT p.user_id, sum(p.streams) FROM presence AS p JOIN presence_workers AS w "
                "ON w.worker = p.worker AND w.expires > ? "
                "WHERE p.user_id IN (SELECT value FROM json_each(?)) GROUP BY p.user_id",
                (time.time(), dumps(list(user_ids))),
            ).fetchall()
        )
        return {user_id: int(n) for user_id, n in rows}

    def _start_feed(self, handler: FeedHandler) -> None:
        """Start this process's feed: every notice committed from now on, in order."""
        start = self.head()  # may raise BrokerError: nothing is set up yet, a later call retries
        self._wake.listen()
        self._feed_cursor = start
        with self._lock:
            if self._conn is not None and self._conn_pid == pid():
                self._conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._feed_task = spawn(self._feed, name="sse-notify-sqlite-feed")
        self._checkpoints_stop = thread_lock()
        self._checkpoints_done = thread_lock()
        self._checkpoints_stop.acquire()
        self._checkpoints_done.acquire()
        start_thread(self._checkpoints, name="sse-notify-sqlite-checkpoint")

    def _checkpoints(self) -> None:
        """Copy the WAL into the database file now and then (an OS thread; see the module doc)."""
        try:
            with self._gate:
                db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            try:
                while not self._checkpoints_stop.acquire(timeout=CHECKPOINT_INTERVAL):
                    try:
                        with self._gate:
                            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    except sqlite3.Error as exc:
                        log.warning("WAL checkpoint failed, retrying: %s", exc)
            finally:
                with self._gate:
                    db.close()
        except sqlite3.Error as exc:
            log.warning("no checkpoint thread (commits checkpoint by themselves): %s", exc)
        finally:
            self._checkpoints_done.release()

    def _feed(self) -> None:
        while not self._closed:
            full = False
            with self._feed_lock:
                try:
                    rows = self._after(self._feed_cursor)
                except BrokerError as exc:
                    if self._closed:
                        break
                    log.warning("feed cannot read the store, retrying: %s", exc)
                    rows = None
                if rows:
                    self._feed_cursor = rows[-1][0]
                    full = len(rows) == _FEED_BATCH
                    self._deliver([_row_item(row) for row in rows])
            if rows is None:
                time.sleep(self.poll_interval)
            elif not full:
                self._wake.wait(self.poll_interval)

    def _stop_feed(self) -> None:
        """Stop the feed and the checkpoint thread, and wait for both."""
        self._wake.close()  # wakes the feed, which sees the store closed
        if self._feed_task is not None:
            self._feed_task.join(5)
            self._feed_task = None
        self._checkpoints_stop.release()
        self._checkpoints_done.acquire(timeout=5)  # its connection is closed
