"""Publishing with (Flask-)SQLAlchemy: in the app's transaction, or after its commit.

**In the transaction** (the PostgreSQL store, on the app's database): pass the session to
``notify``. The notice is written by the session's own connection, so it commits with the app's
rows and is delivered if and only if they commit::

    db.session.add(order)
    notify(order.user_id, {"title": "Order placed"}, connection=db.session)
    db.session.commit()

**After the commit** (every store): :func:`notify_after_commit` publishes when the session
commits, and forgets the notice if it rolls back. Nothing is announced for rows that were rolled
back, but the guarantee is weaker: a process that dies between the app's commit and the publish,
or a store that is down then, loses the notice (it is logged, and counted in
``sse_notify_store_errors_total{operation="after_commit"}``). Pass an ``idempotency_key`` that
names the event, so that a job that repeats the work does not notify twice.
"""

from __future__ import annotations

import logging
import typing as t

from flask import Flask, current_app

from . import telemetry
from .errors import BrokerError, SSENotifyError
from .service import get_state

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session
    from typing_extensions import Unpack

    from .delivery import Delivery

__all__ = ["notify_after_commit"]

log = logging.getLogger("sse_notify.sqlalchemy")

_PENDING = "sse_notify.after_commit"


def notify_after_commit(
    session: Session | scoped_session[t.Any],
    user_id: str | None,
    data: dict[str, t.Any],
    *,
    app: Flask | None = None,
    **options: Unpack[Delivery],
) -> None:
    """Publish ``data`` to ``user_id`` (``None``: everyone) when ``session`` commits; never on rollback.

    The notice and options are checked when they are published, after the commit; a bad one
    is logged then. ``app`` defaults to the current app.
    """
    from sqlalchemy import event
    from sqlalchemy.orm import scoped_session

    if "connection" in options:
        raise TypeError("notify_after_commit publishes after the commit: it takes no connection=")
    if isinstance(session, scoped_session):
        session = session()  # this thread's session, not every session of the registry
    state_app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
    pending = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _publish)
        event.listen(session, "after_rollback", _forget)
    pending.append((state_app, user_id, data, options))


def _publish(session: Session) -> None:
    """The session committed: publish what waited for it, in order."""
    pending = session.info.get(_PENDING) or []
    session.info[_PENDING] = []
    for app, user_id, data, options in pending:
        try:
            with app.app_context():
                get_state(app).notify_many([(user_id, data)], **options)
        except SSENotifyError as exc:  # the app's rows are committed: say what was lost
            if isinstance(exc, BrokerError):
                telemetry.store_failed("after_commit", exc)
            log.error("a notice for %r to publish after a commit was lost: %s", user_id, exc)


def _forget(session: Session) -> None:
    """The session rolled back: nothing that waited for its commit is published."""
    session.info[_PENDING] = []
