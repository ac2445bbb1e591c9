"""Opening a stream without Flask's request machinery, in the standalone app.

Why code of our own here: opening a stream is what a reconnect storm (a deploy,
a network blip) does thousands of times a second, and Flask's request context,
routing and response object were about a fifth of it in a py-spy profile of
the ``connect`` benchmark (docs/BENCHMARKS.md). A stream needs none of them:
the generator runs after the request context is gone anyway.

:func:`fast_streams` wraps the app's WSGI callable. It answers
``GET {prefix}/connection/<user_id>`` itself, with exactly what the view
:func:`sse_notify.views.connection` answers (the same checks, headers and
generator), but only when nothing of Flask's could change that answer:

- the app has no request hooks (``before_request``, ``after_request``,
  ``teardown_request``, URL processors) and nothing listens to Flask's request
  signals, checked on every request, since a host could add one later;
- no ``authorize`` hook (it may read Flask's ``request`` or session);
- and the request would get a stream: a valid user id and a valid token for it.

Everything else, including every request that is refused (400, 401, 403), goes
to Flask unchanged, which answers it as always. Only :func:`create_app` installs
it: in a host app, a middleware the host wrapped inside ours would be skipped.
"""

from __future__ import annotations

import logging
import typing as t
from urllib.parse import parse_qsl

from flask import Flask, signals
from werkzeug.http import parse_cookie

from .errors import SSENotifyError
from .handoff import SocketHandoff, WSGIApp
from .notices import USER_ID_PATTERN
from .streaming import event_stream

__all__ = ["fast_streams"]

log = logging.getLogger("sse_notify.fastpath")

#: What the view sends with a stream (and Flask adds nothing to it).
HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


class _Args:
    """The first value of each query parameter, as ``request.args.get`` reads it."""

    __slots__ = ("_pairs",)

    def __init__(self, query: str) -> None:
        self._pairs: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            self._pairs.setdefault(key, value)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._pairs.get(key, default)


class _Headers:
    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, t.Any]) -> None:
        self._environ = environ

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._environ.get("HTTP_" + name.upper().replace("-", "_"), default)
        return t.cast("str | None", value)


class _Cookies:
    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, t.Any]) -> None:
        self._environ = environ

    def get(self, name: str, default: str | None = None) -> str | None:
        header = self._environ.get("HTTP_COOKIE")
        return parse_cookie(header).get(name, default) if header else default


class StreamRequest:
    """The parts of a request the stream checks read (duck-typed like Flask's ``request``)."""

    __slots__ = ("args", "cookies", "headers")

    def __init__(self, environ: dict[str, t.Any]) -> None:
        self.args = _Args(environ.get("QUERY_STRING", ""))
        self.headers = _Headers(environ)
        self.cookies = _Cookies(environ)


def _flask_untouched(app: Flask) -> bool:
    """Whether no hook or signal receiver of Flask's would see (or change) a request."""
    hooks = (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
        app.url_value_preprocessors,
        app.url_default_functions,
    )
    if any(any(funcs.values()) for funcs in hooks):
        return False
    return not (signals.request_started.receivers or signals.request_finished.receivers)


def fast_streams(app: Flask, wsgi_app: WSGIApp) -> WSGIApp:
    """Wrap ``wsgi_app`` (the app's) so that stream requests skip Flask when that changes nothing."""
    from .extension import get_state

    state = get_state(app)
    prefix = f"{state.url_prefix}/connection/"

    def serve(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.startswith(prefix):
            try:
                stream = _open(environ, start_response, path[len(prefix) :])
            except SSENotifyError:
                stream = None  # refused: Flask answers it (the same check, with its JSON error)
            except Exception:
                log.exception("fast stream path failed; Flask answers instead")
                stream = None
            if stream is not None:
                return stream
        return wsgi_app(environ, start_response)

    def _open(environ: dict[str, t.Any], start_response: t.Any, user_id: str) -> t.Iterator[bytes] | None:
        security, settings = state.security, state.settings
        if not USER_ID_PATTERN.fullmatch(user_id) or security.authorize is not None:
            return None
        if not _flask_untouched(app):
            return None
        request = StreamRequest(environ)
        expires_at = security.stream_grant(request, user_id)  # type: ignore[arg-type]
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id is None:
            last_event_id = request.args.get("last_event_id")
        handoff = SocketHandoff.for_response(start_response) if settings.detach_streams else None
        snapshot = settings.snapshot_size if settings.snapshot else 0
        stream = event_stream(
            state.hub, user_id, last_event_id, expires_at=expires_at, handoff=handoff, snapshot=snapshot
        )
        start_response("200 OK", list(HEADERS))
        return stream

    serve.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return serve
