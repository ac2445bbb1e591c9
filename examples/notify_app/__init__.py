"""A host app with its own login that embeds sse_notify: ``create_app()`` is the factory.

Run it from the repository root: ``gunicorn -c examples/notify_app/gunicorn.conf.py``
(see README.md next to this file).
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask, session

from sse_notify import SSENotify
from sse_notify.config import load_env

from .views import bp

__all__ = ["DEV_SECRET_KEY", "create_app", "notifications"]

#: DEVELOPMENT DEFAULT, not a secret: it signs the session cookies (and sse_notify's
#: connection tokens). In production set FLASK_SECRET_KEY; SSE_NOTIFY_PRODUCTION=true
#: refuses to start with this one.
DEV_SECRET_KEY = "dev-only-not-a-secret"

#: Defaults; the environment overrides each of them (FLASK_<KEY>, and SSE_NOTIFY_<KEY>).
DEFAULTS: dict[str, t.Any] = {
    "SECRET_KEY": DEV_SECRET_KEY,  # DEV DEFAULT: set FLASK_SECRET_KEY
    # DEV DEFAULT: plain HTTP on localhost. Behind HTTPS set FLASK_SESSION_COOKIE_SECURE=true.
    "SESSION_COOKIE_SECURE": False,
    # Keep Lax: the authorize hook below also lets this cookie mark notices read through
    # sse_notify's inbox endpoints (POSTs without a CSRF token), so the cookie must not
    # travel with another site's POST.
    "SESSION_COOKIE_SAMESITE": "Lax",
    # SSE_NOTIFY_BROKER_URL stays the library's default: a SQLite file in the instance folder.
}

#: The extension, made once and bound to each app by create_app (Flask's factory pattern).
notifications = SSENotify(url_prefix="/notify")


@notifications.authorize
def only_the_signed_in_user(user_id: str) -> bool:
    """Open ``user_id``'s stream (and inbox) only for the session signed in as that user.

    No token is involved: the browser's session cookie travels with the EventSource request,
    and anyone else, signed in or not, gets 403. (Returning ``None`` instead would let
    sse_notify's connection tokens decide, e.g. for a mobile app.)
    """
    return session.get("user") == user_id


def create_app(
    test_config: t.Mapping[str, t.Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the app: DEFAULTS, then the environment, then ``test_config``.

    ``instance_path`` is where sse_notify keeps its SQLite store (default: ``instance/``
    next to this file).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask(__name__, instance_path=instance_path or os.path.join(here, "instance"))
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY, ...
    load_env(app.config)  # SSE_NOTIFY_* -> the same keys
    if test_config is not None:
        app.config.update(test_config)

    notifications.init_app(app)  # mounts /notify/..., app.extensions["sse_notify"]
    if app.config["SECRET_KEY"] == DEV_SECRET_KEY:
        if app.extensions["sse_notify"].settings.production:
            raise RuntimeError(
                "SSE_NOTIFY_PRODUCTION is on: set FLASK_SECRET_KEY (the development key is set)"
            )
        app.logger.warning("notify_app runs with the development SECRET_KEY; set FLASK_SECRET_KEY")

    app.register_blueprint(bp)
    return app
