"""Handing a live stream's socket over from gunicorn to the hub, so no greenlet waits per stream.

Why code of our own here: through the WSGI iterator every open stream keeps a
parked greenlet (with its saved stack, gunicorn's request and parser, the
environ and the response objects: ~20 KiB each), and every delivery wakes that
greenlet (an event, a switch, gunicorn's ``write``), one stream at a time. A
py-spy profile of one worker broadcasting to 10,000 streams put ~70 % of its
time in those wake-ups (docs/BENCHMARKS.md). Once a stream is live (headers
and replay sent), :meth:`SocketHandoff.detach` takes the socket's file
descriptor from gevent's socket object and lets gunicorn finish the request without writing
anything more; the hub then writes each frame to each socket with one
non-blocking ``os.write`` from its fan-out loop, as Nchan does in C, and an
event-loop watcher finishes partial writes and notices a client that leaves.

Only where that is exactly what gunicorn would have sent: gunicorn's plain
HTTP/1.x :class:`gunicorn.http.wsgi.Response` (not HTTP/2, not TLS, not the
uwsgi protocol, no ``Content-Length``) of a ``GET`` under gevent, once its headers
are out. The body framing stays gunicorn's choice (``resp.chunked``), and the
framing of every later write, the last chunk included, lives here
(:class:`Framing`). Anywhere else (another server, the threaded development
server, a middleware that wraps ``start_response``) :meth:`SocketHandoff.for_response`
returns ``None`` and the stream goes through the WSGI iterator as usual.

**Fenced.** This relies on details of gunicorn's ``Response`` that are not its
public API: the bound ``start_response``, and the attributes in :data:`DETAILS`.
pyproject.toml bounds gunicorn to the majors the handoff is tested with (``make test``
runs ``tests/test_handoff.py`` against the lowest and the highest), and where a
detail is missing all the same, the stream is served through the WSGI iterator and
the log says why, once per process: slower, never broken.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import time
import typing as t

from .concurrency import gevent_active

__all__ = [
    "CHUNKED",
    "DETAILS",
    "RAW",
    "START_RESPONSE_KEY",
    "Framing",
    "SocketHandoff",
    "capture_start_response",
]

log = logging.getLogger("sse_notify.handoff")

#: The WSGI environ key under which :func:`capture_start_response` keeps the server's ``start_response``.
START_RESPONSE_KEY = "sse_notify.start_response"

#: The attributes of gunicorn's ``Response`` the handoff reads or sets.
DETAILS = (
    "sock",
    "req",
    "status",
    "version",
    "upgrade",
    "should_close",
    "cfg",
    "headers",
    "headers_sent",
    "default_headers",
    "response_length",
    "sent",
    "chunked",
    "force_close",
)

WSGIApp = t.Callable[[dict[str, t.Any], t.Any], t.Iterable[bytes]]

_warned = False


class Framing:
    """How a handed-over stream's bytes go on the wire: as they are (HTTP/1.0)."""

    __slots__ = ()

    #: What ends the body.
    end = b""

    def wrap(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire."""
        return data


class Chunked(Framing):
    """HTTP/1.1 chunked transfer coding, as gunicorn writes it; the last chunk ends the body."""

    __slots__ = ()

    end = b"0\r\n\r\n"

    def wrap(self, data: bytes) -> bytes:
        """``data`` as one chunk."""
        return b"%X\r\n%b\r\n" % (len(data), data)


#: The two framings (shared by every stream).
RAW, CHUNKED = Framing(), Chunked()


def capture_start_response(wsgi_app: WSGIApp) -> WSGIApp:
    """Wrap a WSGI app so views can find the server's ``start_response`` in the environ."""

    def app(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterable[bytes]:
        environ[START_RESPONSE_KEY] = start_response
        return wsgi_app(environ, start_response)

    app.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return app


def _unsupported(missing: t.Iterable[str]) -> None:
    """Say once per process that this gunicorn lacks a detail, so streams keep a greenlet each."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        from importlib.metadata import version

        found = version("gunicorn")
    except Exception:  # pragma: no cover - metadata missing
        found = "unknown"
    log.warning(
        "gunicorn %s lacks what sse_notify's socket handoff relies on (%s): streams are served "
        "through the WSGI iterator instead (a greenlet each; see pyproject.toml for the tested range)",
        found,
        ", ".join(missing),
    )


class SocketHandoff:
    """Takes one gunicorn response's socket over once its headers are out."""

    __slots__ = ("framing", "response")

    def __init__(self, response: t.Any) -> None:
        self.response = response
        self.framing = RAW  # settled by start_response: see ready()

    @classmethod
    def for_response(cls, start_response: t.Any, environ: t.Mapping[str, t.Any]) -> SocketHandoff | None:
        """A handoff for the response behind ``start_response``, or ``None`` where it would not be safe."""
        # Watchers of the event loop write for the hub: that needs gevent. A HEAD (or any
        # other method) gets no body: only a GET's stream is handed over.
        if environ.get("REQUEST_METHOD") != "GET" or not gevent_active():
            return None
        response = getattr(start_response, "__self__", None)
        if response is None or not _is_gunicorn_response(response):
            return None
        if not _has_details(response):
            return None
        if not _is_plain_http(response):
            return None
        # A write to a closed peer must raise EPIPE, not kill the process.
        if signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN:
            return None
        return cls(response)

    def send_head(self, first: bytes) -> None:
        """Send the response head and ``first`` in one write, as gunicorn's first ``write`` would in two.

        The head is gunicorn's own (``default_headers`` and the headers it kept from
        ``start_response``), framed as gunicorn frames the body; afterwards gunicorn knows
        its headers are out. Opening a stream is one ``send`` fewer.
        """
        response = self.response
        if response.headers_sent or response.response_length is not None:
            raise RuntimeError("send_head is only for a response whose head is not out yet")
        lines = _default_head(response)
        lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        head = ("".join(lines) + "\r\n").encode("latin-1")
        self.framing = CHUNKED if response.chunked else RAW
        response.sock.sendall(head + self.framing.wrap(first))
        response.headers_sent = True
        response.sent += len(first)

    def ready(self) -> bool:
        """Whether gunicorn has sent the headers and the framing is settled (call after the first yield)."""
        response = self.response
        if not response.headers_sent or response.response_length is not None:
            return False
        self.framing = CHUNKED if response.chunked else RAW
        return True

    def detach(self) -> int:
        """The socket's (non-blocking) descriptor, now the caller's to write and close.

        gevent's socket lets go of it (``socket.detach``: its watchers dropped, the
        descriptor left open), and gunicorn ends the request writing nothing more (no
        last chunk); its ``close`` of the detached socket does nothing. (A duplicate of
        the descriptor would do too, but costs a ``dup`` and gevent's deferred close of
        the original on every stream.)
        """
        fd: int = self.response.sock.detach()
        self.response.chunked = False  # so gunicorn's close() writes no terminating chunk
        self.response.force_close()  # and drops its side instead of reading a next request
        return fd


_response_class: t.Any = None
#: The last gunicorn config checked, and whether it serves plain HTTP (one per worker).
_config_checked: tuple[t.Any, bool] = (None, False)


#: gunicorn's first head lines (status, Server, Date, Connection, Transfer-Encoding) by what
#: they are made of, with the second they were made in (formatting the Date header was a
#: few per cent of opening a stream: py-spy, ``python -m bench connect``).
_heads: dict[tuple[t.Any, ...], tuple[int, list[str]]] = {}


def _default_head(response: t.Any) -> list[str]:
    """``response.default_headers()``, made once per second for responses of the same shape.

    The key is everything gunicorn's ``default_headers`` reads (the same in every
    supported version); its ``Date`` has a resolution of one second.
    """
    now = int(time.time())
    key: tuple[t.Any, ...] = (response.req.version, response.status, response.version)
    key += (response.upgrade, response.should_close(), response.chunked)
    made = _heads.get(key)
    if made is None or made[0] != now:
        if len(_heads) > 64:  # a few shapes in practice
            _heads.clear()
        made = _heads[key] = (now, response.default_headers())
    return list(made[1])


#: Whether gunicorn's ``Response`` has every one of :data:`DETAILS` (checked on its first instance).
_details_found: bool | None = None


def _has_details(response: object) -> bool:
    global _details_found
    if _details_found is None:  # every instance of the one class has the same (made by its __init__)
        missing = [name for name in DETAILS if not hasattr(response, name)]
        if missing:
            _unsupported(missing)
        _details_found = not missing
    return _details_found


def _is_gunicorn_response(response: object) -> bool:
    global _response_class
    if _response_class is None:
        try:
            from gunicorn.http.wsgi import Response  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - gunicorn is a dependency
            return False
        _response_class = Response
    return type(response) is _response_class  # HTTP/2 and other subclasses frame differently


def _plain_config(cfg: t.Any) -> bool:
    """Whether gunicorn's config serves plain HTTP/1.x (no TLS, no uwsgi); remembered per config object."""
    global _config_checked
    seen, plain = _config_checked
    if seen is not cfg:  # gunicorn's Config.__getattr__ is slow, and a worker keeps one config
        plain = getattr(cfg, "protocol", "http") == "http" and not getattr(cfg, "is_ssl", True)
        _config_checked = (cfg, plain)
    return plain


def _is_plain_http(response: t.Any) -> bool:
    if not _plain_config(response.cfg):
        return False
    sock = response.sock
    if sock is None or _is_tls(sock):
        return False
    # gevent's sockets keep their file descriptor non-blocking and wait in
    # the hub instead: that is what lets os.write on the fd return at once.
    try:
        return not os.get_blocking(sock.fileno())
    except (OSError, ValueError):
        return False


def _is_tls(sock: object) -> bool:
    return isinstance(sock, ssl.SSLSocket) or type(sock).__name__ == "SSLSocket"
