"""gunicorn settings for the example; from the repository root:
``gunicorn -c examples/notify_app/gunicorn.conf.py``.

Command-line flags override these (``-b 0.0.0.0:5000``, ``-w 4``).
"""

from typing import Any

# gevent workers, the open-files limit, graceful reloads and the directory that
# lets /notify/metrics add up every worker. Keep this line first.
from sse_notify.gunicorn_conf import *  # noqa: F403

wsgi_app = "examples.notify_app:create_app()"
bind = "127.0.0.1:5000"
# Two workers, to show that a notice reaches a stream on either.
workers = 2


def when_ready(server: Any) -> None:
    """Say where to go."""
    for address in server.cfg.address:
        if isinstance(address, tuple):  # not a Unix socket
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            server.log.info("notify_app: open http://%s:%s/ (users: alice, bob, carol)", host, address[1])
