"""``sqlite:///path``: the default store, an embedded SQLite file.

Durable and shared by every process on one host, with no server to install:
``gunicorn -w 4`` workers all read and write the same file (WAL mode, so
readers never block the writer). Cursors come from one ``AUTOINCREMENT``
column, so they follow commit order across processes and are never reused.

The statements are shared with the PostgreSQL store (:mod:`sse_notify.brokers.sql`); this module
holds what is SQLite's own: the file, its connection, its WAL and its feed.

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
import sqlite3
import time
import typing as t

from ..concurrency import Task, pid, spawn, start_thread, thread_lock
from ..errors import BrokerError, ConfigError
from .base import FeedHandler
from .sql import Dialect, SQLStore
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

#: Seconds between the WAL checkpoints of a process that has a feed.
CHECKPOINT_INTERVAL = 0.1
#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1000).
AUTOCHECKPOINT_PAGES = 10000


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store made by an earlier version up to this one's schema (each step once)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(inbox_marks)")}
    if "snoozed" not in columns:  # 0.1.0: no snooze
        try:
            db.execute("ALTER TABLE inbox_marks ADD COLUMN snoozed REAL")
        except sqlite3.OperationalError as exc:  # another worker added it first
            if "duplicate column" not in str(exc):
                raise


T = t.TypeVar("T")


class SQLiteDialect(Dialect):
    """SQLite's spelling is the neutral one; its newest cursor is AUTOINCREMENT's counter."""

    head = "SELECT seq FROM sqlite_sequence WHERE name = 'notices'"


class SQLiteBroker(SQLStore[sqlite3.Connection]):
    """Notices in one SQLite file, shared by every process on the host."""

    durable = True
    dialect = SQLiteDialect()
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
        if sqlite3.sqlite_version_info < (3, 35):
            raise ConfigError(
                f"the SQLite store needs SQLite 3.35 or newer; Python here has {sqlite3.sqlite_version}"
            )
        super().__init__(
            retention_count=retention_count, retention_age=retention_age, poll_interval=poll_interval
        )
        self.path = os.path.abspath(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._wake = WakeChannel(self.path)
        self._feed_task: Task | None = None
        # Released to stop the checkpoint thread, and by it when it has closed its connection.
        self._checkpoints_stop = thread_lock()
        self._checkpoints_done = thread_lock()

    def _forked(self) -> None:
        super()._forked()
        self._feed_task = None
        # (the checkpoint thread's locks are made at subscribe)

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

    def _tx(self, work: t.Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")  # the write lock, at once (a rollback on failure: _failed)
            result = work(db)
            db.execute("COMMIT")
            return result

        return self._run(run)

    def _snapshot(self, work: t.Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN")  # one snapshot for every read of ``work``
            try:
                return work(db)
            finally:
                db.execute("COMMIT")

        return self._run(run)

    def _sql(self, work: t.Callable[[sqlite3.Connection], T]) -> T:
        return self._run(work)

    # -- writing ----------------------------------------------------------

    def _announce(self, delivered: bool) -> None:
        self._wake.wake_all(skip_own=delivered)

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
            try:
                more = self._feed_once()
            except BrokerError as exc:
                if self._closed:
                    break
                log.warning("feed cannot read the store, retrying: %s", exc)
                time.sleep(self.poll_interval)
                continue
            if not more:
                self._wake.wait(self.poll_interval)

    def _stop_feed(self) -> None:
        """Stop the feed and the checkpoint thread, and wait for both."""
        self._wake.close()  # wakes the feed, which sees the store closed
        if self._feed_task is not None:
            self._feed_task.join(5)
            self._feed_task = None
        self._checkpoints_stop.release()
        self._checkpoints_done.acquire(timeout=5)  # its connection is closed
