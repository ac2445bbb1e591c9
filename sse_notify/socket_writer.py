"""Writing a stream's frames straight to its socket under gunicorn, past the WSGI iterator.

Why code of our own here: through the WSGI iterator, every delivery wakes the
stream's greenlet (an event, a switch, gunicorn's ``write``) one stream at a
time. A py-spy profile of one worker broadcasting to 10,000 streams put ~70 %
of the time in those wake-ups (docs/BENCHMARKS.md). With a :class:`SocketWriter`
the hub's dispatch loop writes each frame to each idle stream's socket with one
non-blocking ``os.write``, as Nchan does in C; only a stream whose socket buffer
is full falls back to its own greenlet, which finishes the write blocking.

It is used only where that is exactly what gunicorn would have sent: gunicorn's
plain HTTP/1.x :class:`gunicorn.http.wsgi.Response` (not HTTP/2, not TLS, not
the uwsgi protocol, no ``Content-Length``), once its headers are out. The body
framing is gunicorn's own choice (``resp.chunked``) and ``resp.sent`` is kept
up to date for its access log. Anywhere else (another server, the threaded
development server, a middleware that wraps ``start_response``)
:meth:`SocketWriter.for_response` returns ``None`` and streams go through the
WSGI iterator as usual.
"""

from __future__ import annotations

import os
import signal
import typing as t

from .concurrency import gevent_active

__all__ = ["START_RESPONSE_KEY", "SocketWriter", "capture_start_response"]

#: The WSGI environ key under which :func:`capture_start_response` keeps the server's ``start_response``.
START_RESPONSE_KEY = "sse_notify.start_response"

WSGIApp = t.Callable[[dict[str, t.Any], t.Any], t.Iterable[bytes]]


def capture_start_response(wsgi_app: WSGIApp) -> WSGIApp:
    """Wrap a WSGI app so views can find the server's ``start_response`` in the environ."""

    def app(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterable[bytes]:
        environ[START_RESPONSE_KEY] = start_response
        return wsgi_app(environ, start_response)

    app.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return app


class SocketWriter:
    """Frames and writes body bytes on one gunicorn response's socket."""

    __slots__ = ("chunked", "fd", "response", "sock")

    def __init__(self, response: t.Any) -> None:
        self.response = response
        self.sock = response.sock
        self.fd: int = response.sock.fileno()
        self.chunked = False  # settled by start_response: see ready()

    @classmethod
    def for_response(cls, start_response: t.Any) -> SocketWriter | None:
        """A writer for the response behind ``start_response``, or ``None`` where it would not be safe."""
        # Cooperative scheduling is what keeps the hub's writes and the
        # stream's own from interleaving: never under threads.
        if not gevent_active():
            return None
        response = getattr(start_response, "__self__", None)
        if response is None or not _is_plain_gunicorn_response(response):
            return None
        # A write to a closed peer must raise EPIPE, not kill the process.
        if signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN:
            return None
        return cls(response)

    def ready(self) -> bool:
        """Whether gunicorn has sent the headers and the framing is settled (call after the first yield)."""
        response = self.response
        if not response.headers_sent or response.response_length is not None or response._omits_body:
            return False
        self.chunked = bool(response.chunked)
        return True

    def frame(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire (one HTTP chunk when chunked)."""
        self.response.sent += len(data)
        if self.chunked:
            return b"%X\r\n%b\r\n" % (len(data), data)
        return data

    def write_nowait(self, wire: bytes) -> int:
        """Write what the socket buffer takes now; return how many bytes (``OSError`` if the peer is gone)."""
        try:
            return os.write(self.fd, wire)
        except BlockingIOError:
            return 0

    def sendall(self, wire: bytes) -> None:
        """Write all of ``wire``, waiting (cooperatively) while the socket buffer is full."""
        self.sock.sendall(wire)


def _is_plain_gunicorn_response(response: object) -> bool:
    try:
        from gunicorn.http.wsgi import Response  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return False
    if type(response) is not Response:  # HTTP/2 and other subclasses frame differently
        return False
    cfg = getattr(response, "cfg", None)
    if getattr(cfg, "protocol", "http") != "http" or getattr(cfg, "is_ssl", True):
        return False
    sock = getattr(response, "sock", None)
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
