"""Publishing in the app's own SQLAlchemy transaction (PostgreSQL), and after its commit (any store).

A real PostgreSQL holds both the app's table and the store's; Flask-SQLAlchemy runs on psycopg 3
and on psycopg2. A second store on the same database, with a feed, stands for every other worker.
"""

from __future__ import annotations

import hashlib
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from sse_notify import notify
from sse_notify.brokers.postgres import PostgresBroker
from sse_notify.errors import ConfigError
from sse_notify.service import get_state
from sse_notify.sqlalchemy import notify_after_commit

from .brokers.contract import Feed
from .support import PostgresServer, embed

App = tuple[Flask, SQLAlchemy]


def orders_app(instance: Path, store: str, database: str) -> App:
    """A host app with an ``orders`` table in ``database`` and sse_notify on ``store``."""
    app = embed(instance, SSE_NOTIFY_BROKER_URL=store, SQLALCHEMY_DATABASE_URI=database)
    db = SQLAlchemy(app)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id integer PRIMARY KEY, item text)"))
    return app, db


def orders(app: App) -> list[int]:
    """The ids of the orders committed."""
    flask_app, db = app
    with flask_app.app_context():
        return [row[0] for row in db.session.execute(text("SELECT id FROM orders ORDER BY id"))]


def place(app: App, order: int, *, commit: bool, **options: t.Any) -> t.Any:
    """Insert an order and notify its buyer in the same session; commit or roll back."""
    flask_app, db = app
    with flask_app.app_context():
        db.session.execute(text("INSERT INTO orders VALUES (:id, 'book')"), {"id": order})
        receipt = notify("ann", {"title": f"Order {order} placed"}, connection=db.session, **options)
        if commit:
            db.session.commit()
        else:
            db.session.rollback()
        return receipt


@pytest.fixture(name="pg_url")
def _pg_url(postgres_server: PostgresServer, tmp_path: Path) -> str:
    """An empty database of the session's PostgreSQL."""
    return postgres_server.new_database("x" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12])


def close(app: App) -> None:
    """Close the app's connections: its SQLAlchemy engine's and its store's."""
    flask_app, db = app
    with flask_app.app_context():
        db.engine.dispose()
        get_state().broker.close()


@pytest.fixture(name="app", params=["psycopg", "psycopg2"])
def _app(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> t.Iterator[App]:
    """The orders app, its SQLAlchemy on the store's database through each driver."""
    app = orders_app(
        tmp_path / "instance", pg_url, pg_url.replace("postgresql://", f"postgresql+{request.param}://")
    )
    yield app
    close(app)


@pytest.fixture(name="other_worker")
def _other_worker(pg_url: str) -> t.Iterator[tuple[PostgresBroker, Feed]]:
    """Another store on the database, with a feed: what every other worker would get live."""
    store = PostgresBroker(pg_url, poll_interval=0.05)
    feed = Feed()
    store.subscribe(feed)
    yield store, feed
    store.close()


def test_a_notice_in_a_committed_transaction_commits_with_the_rows(
    app: App, other_worker: tuple[PostgresBroker, Feed]
) -> None:
    """The order and its notice commit together; the feeds get it only after the commit."""
    store, feed = other_worker
    flask_app, db = app
    with flask_app.app_context():
        db.session.execute(text("INSERT INTO orders VALUES (1, 'book')"))
        receipt = notify("ann", {"title": "Order 1 placed"}, connection=db.session)
        assert receipt.status == "delivered"
        time.sleep(0.5)  # written, not committed: nobody sees it
        assert feed.notices == []
        assert store.replay("ann", "0").notices == []
        db.session.commit()
    (live,) = feed.wait_count(1)
    assert live.id == receipt.notice.id
    assert [n.id for n in store.replay("ann", "0").notices] == [receipt.notice.id]
    assert orders(app) == [1]


def test_a_rolled_back_transaction_leaves_no_notice(
    app: App, other_worker: tuple[PostgresBroker, Feed]
) -> None:
    """Rolled back: no order, nothing delivered, replayed or listed, and nothing waits in the scheduler."""
    store, feed = other_worker
    place(app, 2, commit=False)
    place(app, 3, commit=False, delay=60)
    time.sleep(0.5)
    assert feed.notices == []
    assert orders(app) == []
    assert store.replay("ann", "0").notices == []
    assert store.inbox_ids("ann") == []
    assert store.scheduled("notice") == 0
    kept = place(app, 4, commit=True)  # the next publish goes on from the same cursor
    assert [n.id for n in feed.wait_count(1)] == [kept.notice.id]


def test_a_scheduled_notice_waits_only_if_the_transaction_commits(app: App, pg_url: str) -> None:
    """A notice with a delay, published in the transaction, waits in the scheduler after the commit."""
    receipt = place(app, 5, commit=True, delay=60)
    assert receipt.status == "scheduled"
    store = PostgresBroker(pg_url)
    assert store.pending("notice", receipt.scheduled_id) is not None
    store.close()


def test_a_failed_publish_fails_the_transaction(app: App) -> None:
    """An Idempotency-Key reused for other data raises, and the app's transaction cannot commit half."""
    place(app, 6, commit=True, idempotency_key="order-6")
    flask_app, db = app
    with flask_app.app_context():
        db.session.execute(text("INSERT INTO orders VALUES (7, 'book')"))
        with pytest.raises(Exception, match="already used for a different request"):
            notify("ann", {"title": "something else"}, connection=db.session, idempotency_key="order-6")
        db.session.rollback()
    assert orders(app) == [6]


def test_connection_needs_the_postgresql_store(tmp_path: Path) -> None:
    """With SQLite, connection= is refused with what to use instead; nothing is stored."""
    app = orders_app(tmp_path / "instance", "sqlite:///n.sqlite3", f"sqlite:///{tmp_path}/shop.sqlite3")
    with pytest.raises(ConfigError, match="notify_after_commit"):
        place(app, 1, commit=True)
    with app[0].app_context():
        assert get_state().broker.head() == 0
    close(app)


def test_a_connection_to_another_database_is_refused(
    app: App, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A session on a database without the store's tables: a ConfigError naming the mistake."""
    other = postgres_server.new_database("y" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12])
    flask_app, _ = app
    elsewhere = create_engine(other.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with flask_app.app_context(), Session(elsewhere) as session:
            with pytest.raises(ConfigError, match="database of SSE_NOTIFY_BROKER_URL"):
                notify("ann", {"title": "x"}, connection=session)
            session.rollback()
    finally:
        elsewhere.dispose()


def test_an_autocommit_connection_is_refused(app: App, pg_url: str) -> None:
    """A connection in autocommit mode would commit the notice alone: refused, saying why."""
    import psycopg

    flask_app, _ = app
    with (
        flask_app.app_context(),
        psycopg.connect(pg_url, autocommit=True) as conn,
        pytest.raises(ConfigError, match="autocommit"),
    ):
        notify("ann", {"title": "x"}, connection=conn)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_after_commit_publishes_on_commit_and_never_on_rollback(
    store: str, pg_url: str, tmp_path: Path
) -> None:
    """notify_after_commit: the commit publishes (in order), a rollback forgets, on any store."""
    url = "sqlite:///n.sqlite3" if store == "sqlite" else pg_url
    app, db = orders_app(tmp_path / "instance", url, f"sqlite:///{tmp_path}/shop.sqlite3")
    with app.app_context():
        db.session.execute(text("INSERT INTO orders VALUES (1, 'book')"))
        notify_after_commit(db.session, "ann", {"n": 1})
        notify_after_commit(db.session, "ann", {"n": 2})
        assert get_state().broker.replay("ann", "0").notices == []  # not before the commit
        db.session.commit()
        db.session.execute(text("INSERT INTO orders VALUES (2, 'book')"))
        notify_after_commit(db.session, "ann", {"n": 3})
        db.session.rollback()
        db.session.execute(text("INSERT INTO orders VALUES (3, 'book')"))
        notify_after_commit(db.session, "ann", {"n": 4})
        db.session.commit()
        stored = get_state().broker.replay("ann", "0").notices
    close((app, db))
    assert [n.data["n"] for n in stored] == [1, 2, 4]
