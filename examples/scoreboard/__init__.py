"""A live scoreboard: a page that follows one topic, and a form that scores goals.

``create_app()`` is the factory. ``GET /`` is the page: each visitor gets a viewer id and a token
that grants the topic ``match-42`` only, and the browser client follows it
(``SSENotify.connect({..., topics: ["match-42"]})``). ``POST /goal`` scores for a side and
publishes the new score to the topic with ``notify_topic``; every open page, on every worker,
shows it at once, and a page that reconnects gets what it missed from the topic's history. See
README.md next to this file.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import typing as t
from contextlib import closing

from flask import Flask, abort, jsonify, render_template, request

from sse_notify import SSENotify, issue_token, notify_topic
from sse_notify.config import load_env

__all__ = ["MATCH", "create_app"]

#: The one topic of this example.
MATCH = "match-42"

#: sse_notify's routes live under /notify; the page is the app's own, at /.
notifications = SSENotify(url_prefix="/notify")

#: A goal for each side: the new score.
SCORE = {
    "home": "UPDATE score SET home = home + 1 WHERE match = ? RETURNING home, away",
    "away": "UPDATE score SET away = away + 1 WHERE match = ? RETURNING home, away",
}


def create_app(instance_path: str | None = None) -> Flask:
    """The scoreboard app (sse_notify's settings from the environment, as in the main app)."""
    app = Flask(__name__, instance_path=instance_path)
    app.config["SECRET_KEY"] = "dev-only-not-a-secret"  # DEV DEFAULT: set FLASK_SECRET_KEY
    app.config.from_prefixed_env()
    load_env(app.config)
    notifications.init_app(app)
    # The score lives in a small SQLite file, so every worker counts from the same one.
    os.makedirs(app.instance_path, exist_ok=True)
    path = os.path.join(app.instance_path, "scoreboard.sqlite3")
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS score (match TEXT PRIMARY KEY, home INT, away INT)")
        db.execute("INSERT OR IGNORE INTO score VALUES (?, 0, 0)", (MATCH,))

    @app.get("/")
    def page() -> str:
        return render_template("scoreboard.html", match=MATCH, viewer="viewer-" + secrets.token_hex(4))

    @app.get("/token/<viewer>")
    def token(viewer: str) -> t.Any:
        # A viewer's token follows this match only: ?topics= with any other topic is refused (403).
        return jsonify(token=issue_token(viewer, 600, topics=[MATCH]))

    @app.post("/goal")
    def goal() -> tuple[t.Any, int]:
        side = (request.get_json(silent=True) or {}).get("side")
        if side not in SCORE:
            abort(400, 'side must be "home" or "away"')
        with closing(sqlite3.connect(path, timeout=10)) as db, db:
            home, away = db.execute(SCORE[side], (MATCH,)).fetchone()
        data = {"home": home, "away": away, "scorer": side}
        # After the commit: a page that reconnects gets every score from the topic's history.
        receipt = notify_topic(MATCH, data, category="score")
        return jsonify(id=receipt.id, **data), 201

    return app
