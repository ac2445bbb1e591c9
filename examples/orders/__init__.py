"""Order placed → notice: a Flask-SQLAlchemy app whose notices commit with its rows.

``create_app()`` is the factory. ``POST /orders`` stores an order and notifies its buyer in the
same database transaction when sse_notify's store is the app's own PostgreSQL
(``notify(..., connection=db.session)``), and after the commit otherwise
(``notify_after_commit``). An order that fails (``"fail": true`` in the request, standing for any
error after the insert) is rolled back, and its buyer is told nothing. See README.md next to this
file.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.orm import Mapped, mapped_column

from sse_notify import SSENotify, issue_token, notify
from sse_notify.config import load_env
from sse_notify.sqlalchemy import notify_after_commit

__all__ = ["Order", "create_app", "db"]

db = SQLAlchemy()
notifications = SSENotify()


class Order(db.Model):  # type: ignore[name-defined,misc]
    """An order of one item by one user."""

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str]
    item: Mapped[str]


def create_app(instance_path: str | None = None) -> Flask:
    """The app: its database is ``ORDERS_DATABASE_URL`` (default: SQLite in the instance folder)."""
    app = Flask(__name__, instance_path=instance_path)
    app.config["SECRET_KEY"] = "dev-only-not-a-secret"  # DEV DEFAULT: set FLASK_SECRET_KEY
    app.config.from_prefixed_env()
    load_env(app.config)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "ORDERS_DATABASE_URL", f"sqlite:///{os.path.join(app.instance_path, 'orders.sqlite3')}"
    )
    db.init_app(app)
    notifications.init_app(app)
    with app.app_context(), db.engine.begin() as conn:
        # Workers starting together: one creates the table, the others then find it.
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('examples.orders'))"))
        elif conn.dialect.name == "sqlite":  # the check and the CREATE under SQLite's write lock
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        db.metadata.create_all(conn)

    @app.post("/orders")
    def place_order() -> tuple[t.Any, int]:
        body = request.get_json(silent=True) or {}
        user_id, item = body.get("user_id"), body.get("item")
        if not isinstance(user_id, str) or not isinstance(item, str):
            abort(400, "user_id and item are required")
        order = Order(user_id=user_id, item=item)
        db.session.add(order)
        db.session.flush()  # the order's id
        notice = {"title": f"Order {order.id} placed", "item": item, "order_id": order.id}
        if in_transaction(app):
            notify(user_id, notice, connection=db.session, idempotency_key=f"order-{order.id}")
        else:
            notify_after_commit(db.session, user_id, notice, idempotency_key=f"order-{order.id}")
        if body.get("fail"):  # any error after the insert: the order and its notice are rolled back
            db.session.rollback()
            abort(500, "the order failed; nothing was stored and nobody was notified")
        db.session.commit()
        return jsonify(
            id=order.id,
            item=item,
            notified="in the transaction" if in_transaction(app) else "after the commit",
        ), 201

    @app.get("/token/<user_id>")
    def token(user_id: str) -> t.Any:
        """DEMO ONLY: a stream token for anyone who asks; a real app gives it to the signed-in user."""
        return jsonify(token=issue_token(user_id))

    return app


def in_transaction(app: Flask) -> bool:
    """Whether notices can commit with the orders: sse_notify's store is the orders' PostgreSQL."""
    store = str(app.config.get("SSE_NOTIFY_BROKER_URL", ""))
    database = str(app.config["SQLALCHEMY_DATABASE_URI"])
    return (
        store.startswith("postgresql://")
        and database.replace("+psycopg2", "").replace("+psycopg", "") == store
    )
