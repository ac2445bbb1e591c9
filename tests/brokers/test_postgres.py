"""``postgresql://``: the contract against a real PostgreSQL (the session's), and what only it has."""

from __future__ import annotations

import hashlib
import threading
import typing as t
from pathlib import Path

import psycopg
import pytest

from sse_notify.brokers import Broker, postgres
from sse_notify.brokers.postgres import PostgresBroker
from sse_notify.brokers.sql import TABLES
from sse_notify.errors import BrokerUnavailable
from sse_notify.notices import Notice

from ..support import PgBouncer, PostgresServer, wait_for
from .contract import Feed, InboxDurableContract


class TestPostgresBroker(InboxDurableContract):
    durable = True
    shared = True
    fast_feed: t.ClassVar[dict[str, t.Any]] = {"poll_interval": 0.05}

    @pytest.fixture(autouse=True)
    def _database(self, postgres_server: PostgresServer, tmp_path: Path) -> None:
        # One database per test: tests share the session's server.
        self.url = postgres_server.new_database("t" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12])

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        return PostgresBroker(self.url, **options)


@pytest.fixture(name="database")
def _fresh_database(postgres_server: PostgresServer, tmp_path: Path) -> str:
    """The URL of an empty database of the session's PostgreSQL."""
    return postgres_server.new_database("m" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12])


def versions(url: str) -> list[int]:
    """The versions ``sse_notify_schema`` records."""
    with psycopg.connect(url) as conn:
        return [int(v) for (v,) in conn.execute("SELECT version FROM sse_notify_schema ORDER BY version")]


def test_the_first_start_creates_the_tables_and_records_their_version(database: str) -> None:
    """A new database gets every table (named sse_notify_…) and one schema row per migration."""
    store = PostgresBroker(database)
    store.ping()
    store.close()
    assert versions(database) == list(range(1, len(postgres.MIGRATIONS) + 1))
    with psycopg.connect(database) as conn:
        tables = {
            name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert tables == {"sse_notify_schema", "sse_notify_cursor"} | {"sse_notify_" + name for name in TABLES}


def test_a_new_release_upgrades_an_existing_database_once(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notices stored by the older schema survive; four stores starting together run the new step once."""
    old = PostgresBroker(database)
    kept = old.publish("ann", '{"n":1}')
    old.close()
    step = "ALTER TABLE sse_notify_notices ADD COLUMN upgraded boolean"  # fails if run twice
    monkeypatch.setattr(postgres, "MIGRATIONS", (*postgres.MIGRATIONS, step))
    stores = [PostgresBroker(database) for _ in range(4)]
    threads = [threading.Thread(target=store.ping) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert versions(database) == list(range(1, len(postgres.MIGRATIONS) + 1))
    assert [n.id for n in stores[0].replay("ann", "0").notices] == [kept.id]
    for store in stores:
        store.close()


def test_a_database_newer_than_the_release_is_refused(database: str) -> None:
    """Tables of a newer release are not touched: the store says to upgrade sse_notify."""
    PostgresBroker(database).close()
    PostgresBroker(database).ping()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO sse_notify_schema VALUES (%s)", (len(postgres.MIGRATIONS) + 1,))
    with pytest.raises(BrokerUnavailable, match="newer than this release knows"):
        PostgresBroker(database).ping()


def test_notify_carries_the_cursor_never_the_notice(database: str) -> None:
    """A 100 KB notice is published; the NOTIFY that wakes the feeds holds only its cursor."""
    store = PostgresBroker(database)
    store.ping()
    with psycopg.connect(database, autocommit=True) as listener:
        listener.execute(f"LISTEN {postgres.CHANNEL}")
        notice = store.publish("bo", '{"text":"' + "x" * 100_000 + '"}')
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    store.close()
    assert payloads == [str(notice.id)]


def test_the_connections_are_named_for_operators(database: str, postgres_server: PostgresServer) -> None:
    """pg_stat_activity shows the store's connections as sse-notify unless the URL names them."""
    store = PostgresBroker(database)
    store.ping()
    assert "sse-notify" in postgres_server.connections()
    store.close()
    named = PostgresBroker(database + "?application_name=orders-notify")
    named.ping()
    assert "orders-notify" in postgres_server.connections()
    named.close()


def test_behind_pgbouncer_in_transaction_mode_the_feed_says_so_and_polls(
    database: str, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a real PgBouncer (transaction pooling) LISTEN gets nothing: a clear warning, and notices
    still arrive by polling."""
    bouncer = PgBouncer(postgres_server).start()
    try:
        store = PostgresBroker(bouncer.url_of(database.rsplit("/", 1)[1]), poll_interval=0.2)
        handler = Feed()
        store.subscribe(handler)
        wait_for(lambda: store.listening is not None, 10, "the feed's LISTEN check")
        assert store.listening is False
        assert "PgBouncer in transaction mode" in caplog.text
        sent = [store.publish("cy", f'{{"n":{i}}}') for i in range(20)]  # past psycopg's prepare threshold
        wait_for(lambda: len(handler.items) == 20, 10, "the notices, by polling")
        assert [n.id for n in handler.items if isinstance(n, Notice)] == [n.id for n in sent]
        store.close()
    finally:
        bouncer.stop()
