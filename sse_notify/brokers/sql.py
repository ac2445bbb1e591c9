"""What the SQL stores (SQLite, PostgreSQL) share: every statement, written once.

:class:`SQLStore` holds the logic of publishing (cursors, grouping, retention, idempotency keys),
replay, inboxes, preferences, users' records, presence and the scheduler, as statements in one
neutral spelling. Each backend brings a :class:`Dialect` that turns that spelling into its own
(placeholders, table names, list parameters) once per statement, and implements only what truly
differs: its connection and transactions, how a publish takes the next cursors, and how the
feed learns that there is something new.

The neutral spelling is SQLite's, with three marks a dialect rewrites:

- ``?`` is a parameter;
- ``IN LIST(?)`` tests membership in a list parameter, passed as :meth:`Dialect.array` makes it;
- ``ROWS(?)`` is a subquery of one column, ``value``, with a row per item of a list of strings;
- ``GREATEST(a, b)`` is the larger of two values.

Table names are bare (``notices``); a dialect may prefix them (PostgreSQL's sit beside an app's own
tables as ``sse_notify_notices``). Both databases take ``ON CONFLICT … DO UPDATE`` and
``RETURNING`` (SQLite from 3.35).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import typing as t

from ..concurrency import Batcher
from ..control import Control
from ..delivery import group_key
from ..errors import BrokerError, BrokerUnavailable, IdempotencyKeyReused
from ..inbox import InboxState
from ..notices import Notice, dumps, utc_iso_ago, utc_now_iso
from ..schedule import Due, checked_kind
from .base import (
    BROADCAST_KEY,
    CONTROL_KEY,
    Item,
    Published,
    Replay,
    Request,
    StoreBase,
    plan_replay,
    replay_publish,
    stored_item,
    topic_keys,
)

__all__ = ["TABLES", "Dialect", "SQLStore"]

log = logging.getLogger("sse_notify.brokers")

C = t.TypeVar("C")
T = t.TypeVar("T")

#: The tables of the SQL stores (their names in the neutral spelling).
TABLES = (
    "notices",
    "trimmed",
    "inbox_marks",
    "inbox_through",
    "presence",
    "presence_workers",
    "scheduled",
    "groups",
    "preferences",
    "user_records",
    "idempotency",
)
#: Rows a feed reads at a time.
FEED_BATCH = 1000

_Row = tuple[int, str, str, str]


class Dialect:
    """How one database spells the shared statements (see the module docstring)."""

    #: A parameter.
    param = "?"
    #: What precedes each table name.
    prefix = ""
    #: ``IN LIST(?)`` in this database.
    in_list = "IN (SELECT value FROM json_each(?))"
    #: ``ROWS(?)`` in this database.
    rows = "(SELECT value FROM json_each(?))"
    #: ``GREATEST(`` in this database.
    greatest = "max("
    #: What makes a ``SELECT`` lock the rows it takes so that other writers skip them ("" where a
    #: transaction already holds the one write lock).
    skip_locked = ""
    #: The newest cursor issued, as one row of one column.
    head = ""

    def __init__(self) -> None:
        self._spelled: dict[str, str] = {}
        names = "|".join(TABLES)
        self._tables = re.compile(rf"\b({names})\b")

    def __call__(self, sql: str) -> str:
        """``sql`` in this database's spelling (made once per statement)."""
        try:
            return self._spelled[sql]
        except KeyError:
            spelled = self._spelled[sql] = self._spell(sql)
            return spelled

    def _spell(self, sql: str) -> str:
        sql = (
            sql.replace("IN LIST(?)", self.in_list)
            .replace("ROWS(?)", self.rows)
            .replace("GREATEST(", self.greatest)
        )
        if self.prefix:
            sql = self._tables.sub(lambda m: self.prefix + m.group(1), sql)
        return sql.replace("?", self.param) if self.param != "?" else sql

    def array(self, values: t.Iterable[t.Any]) -> t.Any:
        """The parameter of an ``IN LIST(?)``."""
        return dumps(list(values))

    def many(self, conn: t.Any, sql: str, rows: t.Sequence[t.Sequence[t.Any]]) -> None:
        """Run one statement (in the neutral spelling) for each of ``rows``."""
        if rows:
            conn.executemany(self(sql), rows)


def row_notice(row: _Row) -> Notice:
    """The notice a row of ``notices`` holds (a user's or a broadcast)."""
    seq, user_id, created_at, data = row
    return Notice.stored(int(seq), None if user_id == BROADCAST_KEY else user_id, created_at, data)


class SQLStore(StoreBase[C]):
    """The SQL stores' shared logic; a backend adds its connection, its cursor and its feed.

    A backend implements :meth:`_tx` (a transaction that writes), :meth:`_snapshot` (reads that
    see one state), :meth:`_sql` (one statement on its own), and the feed; and may override
    :meth:`_take_cursor`, :meth:`_issued` and :meth:`_announce`.
    """

    dialect: t.ClassVar[Dialect]
    #: How long a publish may wait for the feed to hand what it stored to this process's streams
    #: itself (0: only when the feed is idle; see :meth:`_deliver_here`).
    deliver_wait: t.ClassVar[float] = 0.0

    def __init__(self, *, retention_count: int, retention_age: float, poll_interval: float) -> None:
        super().__init__()
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.poll_interval = poll_interval
        # This process's feed: what it delivered last. Guarded by _feed_lock, so the feed
        # and a local publish never deliver at once.
        self._feed_lock = threading.Lock()
        self._feed_cursor = 0
        #: Publishes of this worker that arrive together share one transaction (gevent only).
        self._commits: Batcher[Request, Published] = Batcher(self._commit)

    def _forked(self) -> None:
        super()._forked()
        self._feed_lock = threading.Lock()
        self._commits = Batcher(self._commit)

    # -- what a backend implements ---------------------------------------------

    def _tx(self, work: t.Callable[[t.Any], T]) -> T:
        """Run ``work`` with a connection, in one transaction that writes."""
        raise NotImplementedError

    def _snapshot(self, work: t.Callable[[t.Any], T]) -> T:
        """Run ``work`` with a connection that sees one state of the database throughout."""
        raise NotImplementedError

    def _sql(self, work: t.Callable[[t.Any], T]) -> T:
        """Run ``work`` (one statement) with a connection."""
        raise NotImplementedError

    def _head(self, conn: t.Any) -> int:
        row = conn.execute(self.dialect.head).fetchone()
        return int(row[0]) if row else 0

    def _take_cursor(self, conn: t.Any) -> int:
        """In a publish's transaction: the newest cursor issued, which no other publish may issue now
        (this transaction holds the database's one write lock)."""
        return self._head(conn)

    def _issued(self, conn: t.Any, seq: int) -> None:
        """In a publish's transaction that stored notices: cursors up to ``seq`` are issued."""

    def _announce(self, delivered: bool) -> None:
        """After a commit that stored notices: wake the other processes' feeds (``delivered``: this
        process's streams have them already)."""

    # -- writing ---------------------------------------------------------------

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        if not items:
            return Published([], False)
        return self._commits.submit((items, once))

    def publish_control(self, record: Control) -> None:
        """Store a control record among the notices (never replayed), then announce it."""
        self._publish([(CONTROL_KEY, record.to_json())], None)

    def publish_requests(self, requests: t.Sequence[Request]) -> list[Published | BaseException]:
        """Several publishes in one transaction (a request that fails alone gets its error)."""
        live = [(items, once) for items, once in requests if items]
        results = iter(self._commit(live) if live else [])
        return [next(results) if items else Published([], False) for items, _ in requests]

    def _commit(self, requests: list[Request]) -> list[Published | BaseException]:
        """Store the publish requests of one batch in one transaction, then announce them.

        A request that fails alone (a key reused for another request) gets its own error. If
        the transaction fails, each request of a batch of several is tried again alone, so that
        one bad request does not fail the others.
        """
        try:
            results = self._tx(lambda conn: self._store(conn, requests))
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
            self._announce(self._deliver_here(stored))
        return results

    def _store(self, conn: t.Any, requests: list[Request]) -> list[Published | BaseException]:
        """Write the requests' notices (and keys), in the caller's transaction."""
        q = self.dialect
        created_at = utc_now_iso()
        now = time.time()
        # The next cursors are the last one issued plus 1, 2, ...: no other publish can take
        # them before this transaction ends.
        seq = self._take_cursor(conn)
        results: list[Published | BaseException] = []
        rows: list[_Row] = []
        touched: dict[str, None] = {}  # the keys (users, "*", "!") of the rows, for trimming
        keys: dict[str, tuple[str, int, str, float]] = {}
        for items, once in requests:
            if once is not None:
                key, fingerprint, ttl = once
                earlier = keys.get(key)  # the same key twice in one batch: the first one stores
                found = (
                    earlier[:3]
                    if earlier
                    else conn.execute(
                        q(
                            "SELECT fingerprint, first, created_at FROM idempotency "
                            "WHERE key = ? AND expires > ?"
                        ),
                        (key, now),
                    ).fetchone()
                )
                if found is not None:
                    try:
                        results.append(replay_publish(key, fingerprint, tuple(found), items))
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
                    self._insert(conn, rows)
                    data = self._fold_into(conn, user, group, seq, data, created_at)
                notices.append(Notice.stored(seq, user, created_at, data))
                rows.append((seq, BROADCAST_KEY if user is None else user, created_at, notices[-1].text))
                touched[rows[-1][1]] = None
            results.append(Published(notices, False))
        self._insert(conn, rows)
        if touched:
            self._trim_users(conn, list(touched))
        if keys:
            q.many(
                conn,
                "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, first = excluded.first, "
                "created_at = excluded.created_at, expires = excluded.expires",
                [(key, *record) for key, record in keys.items()],
            )
        if touched:
            self._issued(conn, seq)
        return results

    def _insert(self, conn: t.Any, rows: list[_Row]) -> None:
        """Insert the rows (and empty the list)."""
        if rows:
            self.dialect.many(
                conn, "INSERT INTO notices (seq, user_id, created_at, data) VALUES (?, ?, ?, ?)", rows
            )
            rows.clear()

    def _fold_into(self, conn: t.Any, user: str, key: str, seq: int, text: str, created_at: str) -> str:
        """Fold a grouped notice into its group's unread entry (deleted); point the group at ``seq``."""
        q = self.dialect
        row = conn.execute(
            q(
                "SELECT n.seq, n.created_at, n.data FROM groups AS g JOIN notices AS n "
                "ON n.seq = g.seq AND n.user_id = g.user_id WHERE g.user_id = ? AND g.key = ?"
            ),
            (user, key),
        ).fetchone()
        previous = state = None
        if row is not None:
            previous = Notice.stored(int(row[0]), user, row[1], row[2])
            (through,) = conn.execute(
                q("SELECT coalesce(max(seq), 0) FROM inbox_through WHERE user_id = ?"), (user,)
            ).fetchone()
            mark = conn.execute(
                q("SELECT read, archived FROM inbox_marks WHERE user_id = ? AND seq = ?"), (user, previous.id)
            ).fetchone()
            read = {} if mark is None or mark[0] is None else {previous.id: bool(mark[0])}
            archived = frozenset([previous.id]) if mark is not None and mark[1] else frozenset()
            state = InboxState(int(through), read, archived)
        folded, replaced = self._folded(text, created_at, previous, state)
        if replaced is not None:
            conn.execute(q("DELETE FROM notices WHERE seq = ?"), (replaced,))
            conn.execute(q("DELETE FROM inbox_marks WHERE user_id = ? AND seq = ?"), (user, replaced))
        conn.execute(
            q(
                "INSERT INTO groups VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, key) DO UPDATE SET seq = excluded.seq"
            ),
            (user, key, seq),
        )
        return folded

    def _trim_users(self, conn: t.Any, keys: list[str]) -> None:
        """Keep each user's newest ``retention_count`` notices (one query finds who is over)."""
        q = self.dialect
        cuts = conn.execute(
            q(
                "SELECT k.value, (SELECT seq FROM notices WHERE user_id = k.value "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?) FROM ROWS(?) AS k"
            ),
            (self.retention_count, q.array(keys)),
        ).fetchall()
        for key, cut in cuts:
            if cut is not None:
                conn.execute(q("DELETE FROM notices WHERE user_id = ? AND seq <= ?"), (key, cut))
                self._raise_floor(conn, key, cut)
                if key != BROADCAST_KEY:
                    conn.execute(q("DELETE FROM inbox_marks WHERE user_id = ? AND seq <= ?"), (key, cut))

    def _raise_floor(self, conn: t.Any, key: str, seq: int) -> None:
        conn.execute(
            self.dialect(
                "INSERT INTO trimmed (user_id, seq) VALUES (?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET seq = GREATEST(trimmed.seq, excluded.seq)"
            ),
            (key, seq),
        )

    def trim_expired(self) -> int:
        """Drop notices older than the retention age; remember what each user lost."""
        q = self.dialect
        cutoff = utc_iso_ago(self.retention_age)

        def work(conn: t.Any) -> int:
            rows = conn.execute(
                q("SELECT user_id, max(seq), count(*) FROM notices WHERE created_at < ? GROUP BY user_id"),
                (cutoff,),
            ).fetchall()
            for key, seq, _ in rows:
                conn.execute(q("DELETE FROM notices WHERE user_id = ? AND seq <= ?"), (key, seq))
                self._raise_floor(conn, key, seq)
            # Marks of notices no longer stored (broadcasts trimmed by count included).
            conn.execute(
                q(
                    "DELETE FROM inbox_marks "
                    "WHERE NOT EXISTS (SELECT 1 FROM notices WHERE seq = inbox_marks.seq)"
                )
            )
            conn.execute(q("DELETE FROM idempotency WHERE expires <= ?"), (time.time(),))
            return sum(int(count) for _, _, count in rows)

        return self._tx(work)

    # -- reading ---------------------------------------------------------------

    def head(self) -> int:
        """The newest cursor issued (never reused)."""
        return self._sql(self._head)

    def replay(self, user_id: str, last_event_id: str, topics: t.Sequence[str] = ()) -> Replay:
        """The user's notices, the broadcasts and the topics' after the client's cursor (one snapshot)."""
        q = self.dialect
        keys = q.array([user_id, BROADCAST_KEY, *topic_keys(topics)])

        def work(conn: t.Any) -> Replay:
            (floor,) = conn.execute(
                q("SELECT coalesce(max(seq), 0) FROM trimmed WHERE user_id IN LIST(?)"), (keys,)
            ).fetchone()
            cursor, reset = plan_replay(last_event_id, int(floor), self._head(conn))
            rows = conn.execute(
                q(
                    "SELECT seq, user_id, created_at, data FROM notices "
                    "WHERE user_id IN LIST(?) AND seq > ? ORDER BY seq"
                ),
                (keys, cursor),
            ).fetchall()
            return Replay([row_notice(r) for r in rows], cursor, reset)

        return self._snapshot(work)

    # -- inboxes ---------------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's notices and the broadcasts, newest first (from the index alone)."""
        rows = self._sql(
            lambda conn: conn.execute(
                self.dialect("SELECT seq FROM notices WHERE user_id IN (?, ?) ORDER BY seq DESC"),
                (user_id, BROADCAST_KEY),
            ).fetchall()
        )
        return [int(seq) for (seq,) in rows]

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""
        if not ids:
            return []
        q = self.dialect
        rows = self._sql(
            lambda conn: conn.execute(
                q(
                    "SELECT seq, user_id, created_at, data FROM notices "
                    "WHERE seq IN LIST(?) AND user_id IN (?, ?)"
                ),
                (q.array(ids), user_id, BROADCAST_KEY),
            ).fetchall()
        )
        found = {int(row[0]): row_notice(row) for row in rows}
        return [found[seq] for seq in ids if seq in found]

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks (one snapshot)."""
        q = self.dialect

        def work(conn: t.Any) -> InboxState:
            row = conn.execute(q("SELECT seq FROM inbox_through WHERE user_id = ?"), (user_id,)).fetchone()
            marks = conn.execute(
                q("SELECT seq, read, archived, snoozed FROM inbox_marks WHERE user_id = ?"), (user_id,)
            ).fetchall()
            return InboxState(
                int(row[0]) if row else 0,
                {int(seq): bool(read) for seq, read, _, _ in marks if read is not None},
                frozenset(int(seq) for seq, _, archived, _ in marks if archived),
                {int(seq): float(snoozed) for seq, _, _, snoozed in marks if snoozed is not None},
            )

        return self._snapshot(work)

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set read and/or archived on these notices of the user, in one transaction."""
        q = self.dialect

        def work(conn: t.Any) -> None:
            for column, value in (("read", read), ("archived", archived)):
                if value is not None:
                    q.many(
                        conn,
                        f"INSERT INTO inbox_marks (user_id, seq, {column}) VALUES (?, ?, ?) "
                        f"ON CONFLICT (user_id, seq) DO UPDATE SET {column} = excluded.{column}",
                        [(user_id, seq, value) for seq in ids],
                    )

        self._tx(work)

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Everything up to ``through`` is read: move the user's cursor, drop read marks below it."""
        q = self.dialect

        def work(conn: t.Any) -> None:
            conn.execute(
                q(
                    "INSERT INTO inbox_through (user_id, seq) VALUES (?, ?) ON CONFLICT (user_id) "
                    "DO UPDATE SET seq = GREATEST(inbox_through.seq, excluded.seq)"
                ),
                (user_id, through),
            )
            conn.execute(
                q("UPDATE inbox_marks SET read = NULL WHERE user_id = ? AND seq <= ?"), (user_id, through)
            )

        self._tx(work)

    def delete_notices(self, user_id: str, ids: t.Sequence[int]) -> list[int]:
        """Remove these notices of the user's own (not broadcasts), with their marks; the ids removed."""
        q = self.dialect

        def work(conn: t.Any) -> list[int]:
            found = conn.execute(
                q("DELETE FROM notices WHERE user_id = ? AND seq IN LIST(?) RETURNING seq"),
                (user_id, q.array(ids)),
            ).fetchall()
            removed = sorted(int(seq) for (seq,) in found)
            conn.execute(
                q("DELETE FROM inbox_marks WHERE user_id = ? AND seq IN LIST(?)"), (user_id, q.array(removed))
            )
            return removed

        return self._tx(work)

    def snooze(self, user_id: str, seq: int, until: float) -> None:
        """Snooze the notice until ``until``."""
        self._sql(
            lambda conn: conn.execute(
                self.dialect(
                    "INSERT INTO inbox_marks (user_id, seq, snoozed) VALUES (?, ?, ?) "
                    "ON CONFLICT (user_id, seq) DO UPDATE SET snoozed = excluded.snoozed"
                ),
                (user_id, seq, until),
            )
        )

    def wake(self, user_id: str, seq: int, until: float) -> bool:
        """End the snooze if it is still this one, and mark the notice unread (one statement)."""
        cursor = self._sql(
            lambda conn: conn.execute(
                self.dialect(
                    "UPDATE inbox_marks SET snoozed = NULL, read = false "
                    "WHERE user_id = ? AND seq = ? AND snoozed = ?"
                ),
                (user_id, seq, until),
            )
        )
        return bool(cursor.rowcount)

    # -- preferences and users' records (contacts, push subscriptions) ---------------

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The stored preferences of those of these users who set some (one query)."""
        q = self.dialect
        if len(user_ids) == 1:  # the usual case, without a list parameter
            sql, params = "SELECT user_id, body FROM preferences WHERE user_id = ?", (user_ids[0],)
        else:
            sql, params = (
                "SELECT user_id, body FROM preferences WHERE user_id IN LIST(?)",
                (q.array(user_ids),),
            )
        rows = self._sql(lambda conn: conn.execute(q(sql), params).fetchall())
        return {str(user): str(body) for user, body in rows}

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        row = self._sql(
            lambda conn: conn.execute(self.dialect("SELECT 1 FROM preferences LIMIT 1")).fetchone()
        )
        return row is not None

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""
        self._sql(
            lambda conn: conn.execute(
                self.dialect(
                    "INSERT INTO preferences VALUES (?, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET body = excluded.body"
                ),
                (user_id, text),
            )
        )

    def user_records(self, kind: str, user_id: str) -> dict[str, str]:
        """The user's records of ``kind``, by name."""
        rows = self._sql(
            lambda conn: conn.execute(
                self.dialect("SELECT name, body FROM user_records WHERE kind = ? AND user_id = ?"),
                (kind, user_id),
            ).fetchall()
        )
        return {str(name): str(body) for name, body in rows}

    def set_user_record(self, kind: str, user_id: str, name: str, text: str | None) -> bool:
        """Keep (or, with ``None``, forget) one record; whether it existed before (one transaction)."""
        q = self.dialect

        def work(conn: t.Any) -> bool:
            where = (kind, user_id, name)
            existed = (
                conn.execute(
                    q("DELETE FROM user_records WHERE kind = ? AND user_id = ? AND name = ? RETURNING 1"),
                    where,
                ).fetchone()
                is not None
            )
            if text is not None:
                conn.execute(
                    q(
                        "INSERT INTO user_records VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (kind, user_id, name) DO UPDATE SET body = excluded.body"
                    ),
                    (*where, text),
                )
            return existed

        return self._tx(work)

    # -- presence ----------------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users, renew its lifetime, drop dead workers' rows."""
        q = self.dialect

        def work(conn: t.Any) -> None:
            now = time.time()
            conn.execute(
                q(
                    "INSERT INTO presence_workers VALUES (?, ?) "
                    "ON CONFLICT (worker) DO UPDATE SET expires = excluded.expires"
                ),
                (worker, now + ttl),
            )
            q.many(
                conn,
                "INSERT INTO presence VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, worker) DO UPDATE SET streams = excluded.streams",
                [(user_id, worker, n) for user_id, n in counts.items() if n > 0],
            )
            gone = [user_id for user_id, n in counts.items() if n <= 0]
            if gone:
                conn.execute(
                    q("DELETE FROM presence WHERE worker = ? AND user_id IN LIST(?)"), (worker, q.array(gone))
                )
            dead = conn.execute(
                q("DELETE FROM presence_workers WHERE expires <= ? RETURNING worker"), (now,)
            ).fetchall()
            if dead:
                conn.execute(
                    q("DELETE FROM presence WHERE worker IN LIST(?)"), (q.array(w for (w,) in dead),)
                )

        self._tx(work)

    def presence_leave(self, worker: str) -> None:
        """Forget the worker and its rows."""
        q = self.dialect

        def work(conn: t.Any) -> None:
            conn.execute(q("DELETE FROM presence WHERE worker = ?"), (worker,))
            conn.execute(q("DELETE FROM presence_workers WHERE worker = ?"), (worker,))

        self._tx(work)

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the workers alive."""
        q = self.dialect
        rows = self._sql(
            lambda conn: conn.execute(
                q(
                    "SELECT p.user_id, sum(p.streams) FROM presence AS p JOIN presence_workers AS w "
                    "ON w.worker = p.worker AND w.expires > ? WHERE p.user_id IN LIST(?) GROUP BY p.user_id"
                ),
                (time.time(), q.array(user_ids)),
            ).fetchall()
        )
        return {str(user_id): int(n) for user_id, n in rows}

    # -- the scheduler (``due`` is when it falls due: as scheduled, or its claim's lease end) --

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each entry until its due time, replacing any of this kind and key (one transaction)."""
        checked_kind(kind)
        rows = [(kind, key, due, due, payload, secrets.randbits(62)) for key, due, payload in entries]
        if rows:
            self._tx(
                lambda conn: self.dialect.many(
                    conn,
                    "INSERT INTO scheduled VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                    "due = excluded.due, scheduled_for = excluded.scheduled_for, payload = excluded.payload, "
                    "token = excluded.token",
                    rows,
                )
            )

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry; whether there was one."""
        cursor = self._sql(
            lambda conn: conn.execute(
                self.dialect("DELETE FROM scheduled WHERE kind = ? AND key = ?"), (kind, key)
            )
        )
        return bool(cursor.rowcount)

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key, if it waits (claimed or not)."""
        row = self._sql(
            lambda conn: conn.execute(
                self.dialect("SELECT payload FROM scheduled WHERE kind = ? AND key = ?"), (kind, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` due entries for ``lease`` seconds, the earliest first (one transaction).

        Workers claiming at once take different entries: the dialect's :attr:`Dialect.skip_locked`,
        or the one write lock of the transaction.
        """
        q = self.dialect
        # Every worker asks several times a second: only open a transaction (which may wait for
        # a write lock that publishes want too) when something is due.
        due = self._sql(
            lambda conn: conn.execute(q("SELECT 1 FROM scheduled WHERE due <= ? LIMIT 1"), (now,)).fetchone()
        )
        if due is None:
            return []

        def work(conn: t.Any) -> list[Due]:
            rows = conn.execute(
                q(
                    "SELECT kind, key, scheduled_for, payload FROM scheduled "
                    "WHERE due <= ? ORDER BY due, kind, key LIMIT ?"
                )
                + q.skip_locked,
                (now, limit),
            ).fetchall()
            taken = [
                Due(kind, key, float(due), payload, secrets.randbits(62)) for kind, key, due, payload in rows
            ]
            q.many(
                conn,
                "UPDATE scheduled SET due = ?, token = ? WHERE kind = ? AND key = ?",
                [(now + lease, d.token, d.kind, d.key) for d in taken],
            )
            return taken

        return self._tx(work)

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget the entries these claims took, where they are still theirs."""
        if claimed:
            self._tx(
                lambda conn: self.dialect.many(
                    conn,
                    "DELETE FROM scheduled WHERE kind = ? AND key = ? AND token = ?",
                    [(d.kind, d.key, d.token) for d in claimed],
                )
            )

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait."""
        row = self._sql(
            lambda conn: conn.execute(
                self.dialect("SELECT count(*) FROM scheduled WHERE kind = ?"), (kind,)
            ).fetchone()
        )
        return int(row[0])

    # -- the feed ----------------------------------------------------------------

    def _feed_once(self) -> bool:
        """Deliver the next rows after the feed's cursor, in order; whether more may wait (a full batch).

        :raises BrokerError: if the store cannot be read (nothing is delivered).
        """
        with self._feed_lock:
            cursor = self._feed_cursor
            rows: list[_Row] = self._sql(
                lambda conn: conn.execute(
                    self.dialect(
                        "SELECT seq, user_id, created_at, data FROM notices "
                        "WHERE seq > ? ORDER BY seq LIMIT ?"
                    ),
                    (cursor, FEED_BATCH),
                ).fetchall()
            )
            if rows:
                self._feed_cursor = int(rows[-1][0])
                self._deliver(
                    [stored_item(int(seq), key, created_at, data) for seq, key, created_at, data in rows]
                )
            return len(rows) == FEED_BATCH

    def _deliver_here(self, stored: list[Notice]) -> bool:
        """Hand what this process just stored to its own feed, if nothing can be out of order.

        That is when it comes right after what the feed delivered last (no other process
        committed in between) and holds no broadcast (whose fan-out could make the publisher
        wait). It saves the feed's wake-up and read-back on the worker that published, and it
        is how a grouped notice that the next publish folds away at once still reaches this
        worker's streams. Every other case, and every other process, goes through the feed.
        """
        if not self._feeding or any(n.user_id is None for n in stored):
            return False
        if self.deliver_wait > 0:
            acquired = self._feed_lock.acquire(timeout=self.deliver_wait)
        else:
            acquired = self._feed_lock.acquire(blocking=False)
        if not acquired:
            return False
        try:
            if stored[0].id != self._feed_cursor + 1:
                return False
            self._feed_cursor = stored[-1].id
            items: list[Item | None] = [
                stored_item(n.id, t.cast(str, n.user_id), n.created_at, n.text) for n in stored
            ]
            self._deliver(items)
            return True
        finally:
            self._feed_lock.release()
