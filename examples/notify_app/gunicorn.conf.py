"""gunicorn settings for the example; from the repository root:
``gunicorn -c examples/notify_app/gunicorn.conf.py``.

Command-line flags override these (``-b 0.0.0.0:5000``, ``-w 4``).
"""

from typing import Any

wsgi_app = "examples.notify_app:create_app()"
bind = "127.0.0.1:5000"
# Streams are long-lived: they need gevent's workers (a sync worker would hold one stream).
worker_class = "gevent"
# Two workers, to show that a notice reaches a stream on either.
workers = 2
# Requests in progress per worker; streams, once open, are handed to sse_notify's hub.
worker_connections = 1000
# sse_notify ends its streams itself on SIGTERM/SIGHUP, so a restart takes seconds.
graceful_timeout = 10


def when_ready(server: Any) -> None:
    """Say where to go."""
    for address in server.cfg.address:
        if isinstance(address, tuple):  # not a Unix socket
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            server.log.info("notify_app: open http://%s:%s/ (users: alice, bob, carol)", host, address[1])
