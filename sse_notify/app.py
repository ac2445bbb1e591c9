"""``create_app()``: the standalone server that ``wsgi.py`` and gunicorn run."""

from __future__ import annotations

import typing as t

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.exceptions import HTTPException

from . import redact, shutdown
from .config import DEFAULTS, load_env
from .extension import SSENotify
from .fastpath import fast_streams
from .views import error_response, http_error_response

__all__ = ["create_app"]


class _NoSessions(SessionInterface):
    """Every request gets Flask's null session (nothing read, nothing saved)."""

    #: Read by the stream fast path: a request opens no session here.
    sessionless = True

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the app: defaults, then ``FLASK_*`` and ``SSE_NOTIFY_*`` environment, then ``test_config``.

    Unlike ``SSENotify(app)`` in a host app, the standalone server owns its process: it
    logs (``SSE_NOTIFY_LOG_FORMAT`` defaults to text), keeps tokens out of the access
    logs, and closes its streams on SIGTERM.
    """
    app = Flask("sse_notify", instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env()
    load_env(app.config)
    if test_config is not None:
        app.config.update(test_config)
    if not app.config["SSE_NOTIFY_LOG_FORMAT"]:
        app.config["SSE_NOTIFY_LOG_FORMAT"] = "text"  # the standalone server owns its logging

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        # Every error answers JSON, 404 and 405 (with its Allow header) included.
        return http_error_response(exc)

    @app.errorhandler(Exception)
    def _server_error(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        app.logger.exception("unhandled error")
        return error_response(500, "internal_server_error", "the server failed; see its log")

    # The server keeps no Flask session: skip opening a signed cookie session
    # on every request (a serializer built each time; ~5 % of a stream's
    # opening cost, measured with py-spy).
    app.session_interface = _NoSessions()
    SSENotify(app)
    # Streams skip Flask's request machinery when nothing of Flask's would see them (fastpath.py).
    app.wsgi_app = fast_streams(app, app.wsgi_app)  # type: ignore[method-assign,assignment]
    # The standalone server owns its process: tokens stay out of the access logs, and
    # SIGTERM closes the streams (a gunicorn worker's handler is set before the app loads).
    redact.install()
    shutdown.install()
    return app
