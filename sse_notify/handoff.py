"""Handing a live stream's socket over from gunicorn to the hub, so no greenlet waits per stream.

Why code of our own here: through the WSGI iterator every open stream keeps a
parked greenlet (with its saved stack, gunicorn's request and parser, the
environ and the response objects: ~20 KiB each), and every delivery wakes that
greenlet (an event, a switch, gunicorn's ``write``), one stream at a time. A
py-spy profile of one worker broadcasting to 10,000 streams put ~70 % of its
time in those wake-ups (docs/BENCHMARKS.md). Once a stream is live (headers
and replay sent), :meth:`SocketHandoff.detach` takes a duplicate of the
socket's file descriptor and lets gunicorn finish the request without writing
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
        missing = [name for name in DETAILS if not hasattr(response, name)]
        if missing:
            _unsupported(missing)
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
        lines = response.default_headers()
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
        """A non-blocking duplicate of the socket's descriptor, now the caller's to write and close.

        gunicorn then ends the request writing nothing more (no last chunk)
        and closes its own descriptor; the connection lives on through ours.
        """
        fd = os.dup(self.response.sock.fileno())
        self.response.chunked = False  # so gunicorn's close() writes no terminating chunk
        self.response.force_close()  # and drops its side instead of reading a next request
        return fd


def _is_gunicorn_response(response: object) -> bool:
    try:
        from gunicorn.http.wsgi import Response  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return False
    return type(response) is Response  # HTTP/2 and other subclasses frame differently


def _is_plain_http(response: t.Any) -> bool:
    cfg = response.cfg
    if getattr(cfg, "protocol", "http") != "http" or getattr(cfg, "is_ssl", True):
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
    import ssl

    return isinstance(sock, ssl.SSLSocket) or type(sock).__name__ == "SSLSocket"
