"""Opening a stream without Flask's request context, in the standalone app, exactly as Flask would.

Why code of our own here: opening a stream is what a reconnect storm (a deploy, a
network blip) does thousands of times a second, and Flask's request context, its
hooks and its response object were about a fifth of it in a py-spy profile of the
``connect`` benchmark (docs/BENCHMARKS.md). A stream needs none of them: the generator
runs after the request context is gone anyway.

:func:`fast_streams` wraps the app's WSGI callable. For a ``GET`` under the stream
path it reads the request with the app's own request class (werkzeug: query, headers,
cookies), routes it with the app's own URL adapter (so ``TRUSTED_HOSTS``,
``SERVER_NAME`` and host or subdomain matching act as they do in Flask) and, when the
route is the stream view, answers with :func:`~sse_notify.streaming.open_stream`: the
function the view calls. Routing was a quarter of the fast path (cProfile of opening
streams in one process), so where werkzeug's answer is certain it is not asked
(:class:`Route`): no trusted hosts, no ``SERVER_NAME``, no host or subdomain matching,
no WebSocket upgrade, a plain ASCII segment after the prefix, and no other rule of the
app under that prefix (werkzeug's matcher tries static parts first, so no rule
elsewhere can take the path). It does so only when nothing of Flask's could change the
answer:

- the app has no request or app-context hooks and nothing listens to Flask's request
  or app-context signals (checked on every request: a host could add one later), and
  it keeps no session (:func:`create_app` turns sessions off);
- no ``authorize`` hook (it may read Flask's ``request`` or session);
- and the request gets a stream: a valid user id and a valid token for it.

Everything else, every refusal (400, 401, 403, a redirect, a host that is not
trusted) included, goes to Flask unchanged, which answers it as always.
``tests/test_fastpath.py`` sends one matrix of settings and requests through both
paths and compares the answers. Only :func:`create_app` installs it: in a host app, a
middleware the host wrapped inside ours would be skipped.
"""

from __future__ import annotations

import logging
import typing as t

from flask import Flask, signals
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

from .errors import SSENotifyError
from .handoff import WSGIApp
from .service import get_state
from .streaming import StreamResponse, open_stream

__all__ = ["ENDPOINT", "Route", "fast_streams", "flask_untouched"]

log = logging.getLogger("sse_notify.fastpath")

#: Flask's signals around a request; a receiver of any of them must see every request.
SIGNALS = (
    signals.request_started,
    signals.request_finished,
    signals.request_tearing_down,
    signals.got_request_exception,
    signals.appcontext_pushed,
    signals.appcontext_tearing_down,
    signals.appcontext_popped,
)


def flask_untouched(app: Flask) -> bool:
    """Whether no hook, signal receiver or session of Flask's would see (or change) a request."""
    hooks = (
        app.before_request_funcs,
        app.after_request_funcs,
        app.teardown_request_funcs,
        app.url_value_preprocessors,
        app.url_default_functions,
    )
    if any(any(funcs.values()) for funcs in hooks) or app.teardown_appcontext_funcs:
        return False
    if not getattr(app.session_interface, "sessionless", False):
        return False
    return not any(signal.receivers for signal in SIGNALS)


#: The stream view's endpoint.
ENDPOINT = "sse_notify.connection"


class Route:
    """Where werkzeug would surely route ``GET <prefix>/connection/<segment>`` to the stream view."""

    __slots__ = ("_checked", "_sole", "app", "prefix")

    def __init__(self, app: Flask, prefix: str) -> None:
        self.app = app
        #: ``<url prefix>/connection/``.
        self.prefix = prefix
        self._checked: tuple[int, int] = (0, -1)  # (the map's id, its number of rules) when last checked
        self._sole = False

    def user_id(self, environ: t.Mapping[str, t.Any]) -> str | None:
        """The user id werkzeug would route this request's path to, or ``None``: ask werkzeug."""
        app = self.app
        if (
            app.config.get("TRUSTED_HOSTS") is not None
            or app.config["SERVER_NAME"] is not None  # (before Flask 3.1 it restricted the host)
            or app.subdomain_matching
            or "HTTP_UPGRADE" in environ  # a WebSocket upgrade does not match a plain rule
        ):
            return None
        segment = environ["PATH_INFO"][len(self.prefix) :]
        if not segment or "/" in segment or not segment.isascii():
            return None
        return segment if self._sole_rule() else None

    def _sole_rule(self) -> bool:
        """Whether the stream view's rule is the only one under the prefix, as this app routes."""
        url_map = self.app.url_map
        rules = getattr(url_map, "_rules", None)  # werkzeug's list of rules (rules are only ever added)
        if rules is None or url_map.host_matching:
            return False
        checked = (id(url_map), len(rules))
        if checked != self._checked:
            ours = [rule for rule in rules if rule.endpoint == ENDPOINT]
            self._sole = (
                len(ours) == 1
                and ours[0].rule == self.prefix + "<user_id>"
                and ours[0].redirect_to is None
                and not ours[0].websocket
                and ours[0].subdomain == (url_map.default_subdomain or "")
                and not any(rule.rule.startswith(self.prefix) for rule in rules if rule is not ours[0])
            )
            self._checked = checked
        return self._sole


def fast_streams(app: Flask, wsgi_app: WSGIApp) -> WSGIApp:
    """Wrap ``wsgi_app`` (the app's) so that stream requests skip Flask when that changes nothing."""
    state = get_state(app)
    prefix = f"{state.url_prefix}/connection/"
    route = Route(app, prefix)

    def open_fast(environ: dict[str, t.Any], start_response: t.Any) -> StreamResponse | None:
        request = app.request_class(environ, populate_request=False)  # no cycle through the environ
        user_id = route.user_id(environ)
        if user_id is None:
            rule, args = app.create_url_adapter(request).match(return_rule=True)  # type: ignore[union-attr]
            if rule.endpoint != ENDPOINT:
                return None
            user_id = args["user_id"]
        return open_stream(state, request, user_id, start_response)

    def serve(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterable[bytes]:
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and environ.get("PATH_INFO", "").startswith(prefix)
            and state.security.authorize is None
            and state.security.authorize_topic is None
            and flask_untouched(app)
        ):
            try:
                stream = open_fast(environ, start_response)
            except (HTTPException, RoutingException, SSENotifyError):
                stream = None  # refused, redirected, not routed here...: Flask answers it, as always
            except Exception:
                log.exception("fast stream path failed; Flask answers instead")
                stream = None
            if stream is not None:
                start_response("200 OK", stream.headers)
                return stream.body
        return wsgi_app(environ, start_response)

    serve.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return serve
