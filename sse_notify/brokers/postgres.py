"""``postgresql://user:password@host:5432/db``: notices in PostgreSQL, shared by every host.

For apps whose data already lives in PostgreSQL: no other server to run. psycopg 3 with a pool
(``psycopg_pool``); under gevent, psycopg waits cooperatively when ``select`` was patched before
it was imported (gunicorn's gevent worker does so), which :class:`PostgresBroker` checks.

**Tables** (every name starts with ``sse_notify_``, so they sit beside the app's own): the same
as the SQLite store's, and so are the statements (:mod:`sse_notify.brokers.sql`); this module
holds what is PostgreSQL's own: the pool, the migrations, the cursor row and the feed. The tables
are made and upgraded by the server itself. ``sse_notify_schema`` holds the
version; each migration runs once, under an advisory lock, so workers starting together do not
race, and a newer release upgrades an existing database at its first start.

**Cursors follow commit order.** A publish takes the one row of ``sse_notify_cursor`` ``FOR
UPDATE`` and gives its notices the next numbers, so the next publish (from any worker or host)
waits for that commit: a reader never sees cursor 12 committed while 11 is still to come, and
none is ever reused. That serializes publishes per database, as SQLite's write lock does; a
publish round of a worker is one transaction (a :class:`~sse_notify.concurrency.Batcher`).

**The feed.** Each worker keeps one connection that ``LISTEN``s on ``sse_notify``. A publish's
``NOTIFY`` (sent at its commit) carries only the new cursor, never the notice (``NOTIFY``
payloads stop at 8,000 bytes); the feed then reads the rows after the last cursor it delivered
from the table. It also reads every ``poll_interval`` seconds, and again after every reconnect,
so a lost ``NOTIFY`` or a restart of PostgreSQL loses nothing. Behind PgBouncer in transaction
mode ``LISTEN`` cannot work: the feed then still delivers by polling, and says so at start.
Server-side prepared statements are off for the same reason (a transaction-mode pool hands each
transaction to any server connection).
"""

from __future__ import annotations

import logging
import time
import typing as t

from ..concurrency import Task, gevent_active, spawn
from ..errors import BrokerError, BrokerUnavailable, ConfigError
from .base import FeedHandler, Published
from .sql import Dialect, SQLStore

try:
    import psycopg
    import psycopg_pool
except ImportError:  # pragma: no cover - depends on the install
    psycopg = None  # type: ignore[assignment]
    psycopg_pool = None  # type: ignore[assignment]

__all__ = ["MIGRATIONS", "PostgresBroker"]

log = logging.getLogger("sse_notify.brokers.postgres")

#: PostgreSQL's SQLSTATE for a table that does not exist.
UNDEFINED_TABLE = "42P01"
#: The channel of the feed's ``LISTEN``/``NOTIFY``.
CHANNEL = "sse_notify"
T = t.TypeVar("T")

#: The schema, one migration per version: a release that changes it appends one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sse_notify_cursor (one boolean PRIMARY KEY DEFAULT true CHECK (one), seq bigint NOT NULL);
    INSERT INTO sse_notify_cursor VALUES (true, 0);
    CREATE TABLE sse_notify_notices (
        seq bigint PRIMARY KEY, user_id text NOT NULL, created_at text NOT NULL, data text NOT NULL
    );
    CREATE INDEX sse_notify_notices_by_user ON sse_notify_notices (user_id, seq);
    CREATE INDEX sse_notify_notices_by_age ON sse_notify_notices (created_at);
    CREATE TABLE sse_notify_trimmed (user_id text PRIMARY KEY, seq bigint NOT NULL);
    CREATE TABLE sse_notify_inbox_marks (
        user_id text NOT NULL, seq bigint NOT NULL, read boolean, archived boolean NOT NULL DEFAULT false,
        snoozed double precision, PRIMARY KEY (user_id, seq)
    );
    CREATE TABLE sse_notify_inbox_through (user_id text PRIMARY KEY, seq bigint NOT NULL);
    CREATE TABLE sse_notify_presence (
        user_id text NOT NULL, worker text NOT NULL, streams integer NOT NULL, PRIMARY KEY (user_id, worker)
    );
    CREATE TABLE sse_notify_presence_workers (worker text PRIMARY KEY, expires double precision NOT NULL);
    CREATE TABLE sse_notify_scheduled (
        kind text NOT NULL, key text NOT NULL, due double precision NOT NULL,
        scheduled_for double precision NOT NULL, payload text NOT NULL, token bigint NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX sse_notify_scheduled_by_due ON sse_notify_scheduled (due);
    CREATE TABLE sse_notify_groups (user_id text NOT NULL, key text NOT NULL, seq bigint NOT NULL,
        PRIMARY KEY (user_id, key));
    CREATE TABLE sse_notify_preferences (user_id text PRIMARY KEY, body text NOT NULL);
    CREATE TABLE sse_notify_idempotency (
        key text PRIMARY KEY, fingerprint text NOT NULL, first bigint NOT NULL, created_at text NOT NULL,
        expires double precision NOT NULL
    );
    CREATE TABLE sse_notify_user_records (
        kind text NOT NULL, user_id text NOT NULL, name text NOT NULL, body text NOT NULL,
        PRIMARY KEY (kind, user_id, name)
    );
    """,
)


def migrate(conn: t.Any) -> int:
    """Bring the database's sse_notify tables up to :data:`MIGRATIONS` (each step once); the version now."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('sse_notify_schema'))")
        conn.execute("CREATE TABLE IF NOT EXISTS sse_notify_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM sse_notify_schema").fetchone()
        version = int(row[0] or 0)
        if version > len(MIGRATIONS):
            raise BrokerUnavailable(
                f"the database's sse_notify tables are version {version}, newer than this release knows "
                f"({len(MIGRATIONS)}): upgrade sse_notify"
            )
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(step)
            conn.execute("INSERT INTO sse_notify_schema VALUES (%s)", (number,))
            log.info("sse_notify tables migrated to version %d", number)
        return len(MIGRATIONS)


class PostgresDialect(Dialect):
    """PostgreSQL's spelling: ``%s`` parameters, tables named ``sse_notify_…``, arrays for lists."""

    param = "%s"
    prefix = "sse_notify_"
    in_list = "= ANY(?)"
    rows = "(SELECT unnest(?::text[]) AS value)"
    greatest = "greatest("
    skip_locked = " FOR UPDATE SKIP LOCKED"
    head = "SELECT seq FROM sse_notify_cursor"

    def array(self, values: t.Iterable[t.Any]) -> t.Any:
        return list(values)

    def many(self, conn: t.Any, sql: str, rows: t.Sequence[t.Sequence[t.Any]]) -> None:
        if rows:
            with conn.cursor() as cur:
                cur.executemany(self(sql), rows)


class PostgresBroker(SQLStore["psycopg_pool.ConnectionPool[t.Any]"]):
    """Notices in PostgreSQL tables, shared by every worker and host on the database."""

    durable = True
    dialect = PostgresDialect()
    serialized = False  # a pool of connections: calls of one process run side by side
    # A publish waits for its worker's feed to hand over what it stored: the feed, woken by this
    # very NOTIFY, may be reading; a fold that the next publish replaces at once must still
    # reach this worker's streams.
    deliver_wait = 1.0
    if psycopg is not None:
        unavailable_errors = (psycopg.OperationalError, psycopg_pool.PoolTimeout, OSError)
        failure_errors = (psycopg.Error,)

    def __init__(
        self,
        url: str,
        *,
        retention_count: int = 1000,
        retention_age: float = 7 * 86400,
        poll_interval: float = 1.0,
        pool_size: int = 4,
        connect_timeout: int = 5,
    ) -> None:
        if psycopg is None:
            raise ConfigError('the PostgreSQL store needs psycopg: pip install "sse-notify[postgres]"')
        super().__init__(
            retention_count=retention_count, retention_age=retention_age, poll_interval=poll_interval
        )
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout = max(1, connect_timeout)
        named = "application_name" in psycopg.conninfo.conninfo_to_dict(url)
        #: How each connection opens (named ``sse-notify`` in ``pg_stat_activity`` unless the URL names it).
        self.connect_options: dict[str, t.Any] = {
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
            # No server-side prepared statements: behind PgBouncer in transaction mode a
            # connection's next transaction may run on another server connection.
            "prepare_threshold": None,
            **({} if named else {"application_name": "sse-notify"}),
        }
        self._feed_task: Task | None = None
        #: Whether the feed's LISTEN works (``False`` behind PgBouncer in transaction mode).
        self.listening: bool | None = None
        #: Whether the server was lost (see :meth:`_pooled`).
        self._down = False

    def _forked(self) -> None:
        super()._forked()
        self._feed_task = None

    def describe(self) -> str:
        """``PostgreSQL at host:port/db``."""
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        return (
            f"PostgreSQL at {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        )

    # -- connection -------------------------------------------------------

    def _connect(self) -> psycopg_pool.ConnectionPool[t.Any]:
        if gevent_active():
            from psycopg import waiting

            if waiting.wait is getattr(waiting, "wait_c", None):
                log.warning(
                    "psycopg was imported before gevent patched select: its calls will block the worker. "
                    "Import it after the patch (gunicorn -k gevent without preload_app does)"
                )
        with psycopg.connect(self.url, **self.connect_options) as conn:
            migrate(conn)
        pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs=self.connect_options,
            timeout=self.connect_timeout,
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="sse-notify",
        )
        pool.open(wait=False)
        return pool

    def _disconnect(self, pool: psycopg_pool.ConnectionPool[t.Any]) -> None:
        pool.close()

    def _ping(self, pool: psycopg_pool.ConnectionPool[t.Any]) -> None:
        self._pooled(pool, lambda conn: conn.execute("SELECT 1").fetchone())

    def _sql(self, work: t.Callable[[t.Any], T]) -> T:
        return self._run(lambda pool: self._pooled(pool, work))

    def _pooled(self, pool: psycopg_pool.ConnectionPool[t.Any], work: t.Callable[[t.Any], T]) -> T:
        """Run ``work`` with a connection of the pool; fail at once while the server is known down.

        The pool waits up to ``connect_timeout`` for a connection it cannot make, so every call
        during an outage would answer 503 only after that wait. Once a call or the feed lost the
        server, each call first tries a connection of its own: refused, it fails at once; made,
        the server is back and the pool (which reconnects by itself) is used again.
        """
        if self._down:
            with psycopg.connect(self.url, **self.connect_options):
                self._down = False
        try:
            with pool.connection() as conn:
                return work(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            self._down = True
            raise

    def _tx(self, work: t.Callable[[t.Any], T]) -> T:
        def run(conn: t.Any) -> T:
            with conn.transaction():
                return work(conn)

        return self._sql(run)

    def _snapshot(self, work: t.Callable[[t.Any], T]) -> T:
        def run(conn: t.Any) -> T:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return work(conn)

        return self._sql(run)

    # -- writing ----------------------------------------------------------

    def _take_cursor(self, conn: t.Any) -> int:
        """The newest cursor, its row locked until this transaction ends (see the module docstring)."""
        (seq,) = conn.execute("SELECT seq FROM sse_notify_cursor FOR UPDATE").fetchone()
        return int(seq)

    def _issued(self, conn: t.Any, seq: int) -> None:
        conn.execute("UPDATE sse_notify_cursor SET seq = %s", (seq,))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))  # sent at the commit

    # -- the feed ---------------------------------------------------------

    def _start_feed(self, handler: FeedHandler) -> None:
        """Start this process's feed: every item committed from now on, in order."""
        self._feed_cursor = self.head()  # may raise BrokerError: a later call retries
        self._feed_task = spawn(self._feed, name="sse-notify-postgres-feed")

    def _catch_up(self) -> None:
        """Deliver every row after the feed's cursor, in order."""
        while not self._closed and self._feed_once():
            pass

    def _feed(self) -> None:
        """LISTEN, and read the table after each NOTIFY and every poll interval; reconnect with backoff."""
        backoff = 0.1
        while not self._closed:
            try:
                with psycopg.connect(self.url, **self.connect_options) as listener:
                    self.listening = self._listen(listener)
                    self._catch_up()  # what was committed while this connection was not listening
                    backoff = 0.1
                    while not self._closed:
                        if self.listening:
                            for _ in listener.notifies(timeout=self.poll_interval, stop_after=1):
                                pass
                        else:
                            time.sleep(self.poll_interval)
                        self._catch_up()
            except (psycopg.Error, BrokerError) as exc:
                if self._closed:
                    return
                self._down = self._down or isinstance(exc, (psycopg.OperationalError, BrokerUnavailable))
                log.warning("feed lost %s, reconnecting in %.1f s: %s", self.describe(), backoff, exc)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def _listen(self, listener: t.Any) -> bool:
        """``LISTEN``, and check that a ``NOTIFY`` arrives; if not (PgBouncer in transaction mode), poll.

        The check sends one ``NOTIFY`` from another connection and waits for it two seconds.
        """
        listener.execute(f"LISTEN {CHANNEL}")
        self._sql(lambda conn: conn.execute("SELECT pg_notify(%s, 'listen-check')", (CHANNEL,)))
        if any(True for _ in listener.notifies(timeout=2.0, stop_after=1)):
            return True
        log.warning(
            "%s: LISTEN gets no NOTIFY (PgBouncer in transaction mode?): new notices are read every %.1f s "
            "(SSE_NOTIFY_POLL_INTERVAL) instead of at once. Connect the server to PostgreSQL directly, "
            "or through PgBouncer in session mode",
            self.describe(),
            self.poll_interval,
        )
        return False

    def _stop_feed(self) -> None:
        """Stop the feed and wait for it (it wakes at the next notify or poll interval)."""
        if self._feed_task is not None:
            self._feed_task.join(self.poll_interval + 5)
            self._feed_task = None


class JoinedStore(PostgresBroker):
    """The store's statements on an app's own connection, inside the app's open transaction.

    Nothing here commits or rolls back: the app does. What is written (the notices, the cursor
    and its ``NOTIFY``, what waits in the scheduler) becomes visible, and wakes the feeds, only
    when the app commits; a rollback leaves no trace. The cursor row stays locked until then, so
    other publishes wait for the app's commit: notify late in a short transaction.
    """

    def __init__(self, store: PostgresBroker, connection: t.Any) -> None:
        super().__init__(store.url, retention_count=store.retention_count, retention_age=store.retention_age)
        self._given = connection

    def _run(self, work: t.Callable[[t.Any], T]) -> T:
        """Run ``work`` on the app's connection; its driver's errors (psycopg 3 or psycopg2) translated."""
        try:
            return work(self._given)
        except Exception as exc:
            state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
            if state is None:  # not an error of the database
                raise
            if state == UNDEFINED_TABLE:
                raise ConfigError(
                    "connection= is on a database without sse_notify's tables: it must be the "
                    f"database of SSE_NOTIFY_BROKER_URL ({self.describe()})"
                ) from exc
            raise BrokerError(f"{self.describe()}, in your transaction: {exc}") from exc

    def _sql(self, work: t.Callable[[t.Any], T]) -> T:
        return self._run(work)

    _tx = _snapshot = _sql

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        if not items:
            return Published([], False)
        (result,) = self._commit([(items, once)])
        if isinstance(result, BaseException):
            raise result
        return result


def joined(store: PostgresBroker, connection: t.Any) -> JoinedStore:
    """``store`` on the app's ``connection``: a SQLAlchemy ``Session`` or ``Connection``, or a DB-API
    connection (psycopg 3 or psycopg2) with a transaction open on the store's database."""
    raw = connection
    if hasattr(raw, "get_bind") and callable(getattr(raw, "connection", None)):  # a Session
        raw = raw.connection()  # (begins the session's transaction if it has none)
    dbapi = getattr(getattr(raw, "connection", None), "dbapi_connection", None)  # a SQLAlchemy Connection
    if dbapi is not None:
        raw = dbapi
    if not hasattr(raw, "cursor"):
        raise TypeError(
            f"connection= takes a SQLAlchemy Session or Connection, or a DB-API connection; "
            f"got {type(connection).__name__}"
        )
    if getattr(raw, "autocommit", False) is True:
        raise ConfigError(
            "connection= must have a transaction open (this one is in autocommit mode): the notice "
            "would be committed on its own, not with your rows"
        )
    store._run(lambda pool: None)  # the tables exist (this process's first call made or upgraded them)
    return JoinedStore(store, raw if hasattr(raw, "execute") else _Cursors(raw))


class _Cursors:
    """A DB-API connection without ``execute`` (psycopg2) as the store's statements call it."""

    def __init__(self, connection: t.Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: t.Sequence[t.Any] = ()) -> t.Any:
        cursor = self._connection.cursor()
        cursor.execute(sql, params)
        return cursor

    def cursor(self) -> t.Any:
        return self._connection.cursor()
