"""gunicorn settings for long-lived SSE streams; read by default from this folder.

The settings and hooks every sse_notify server needs come from
``sse_notify.gunicorn_conf`` (the open-files limit, gevent workers, graceful
reloads, the metrics directory shared by the workers). Command-line flags
override these (``gunicorn -k gevent -w 4 -b 0.0.0.0:8000 wsgi:app``).
"""

from sse_notify.gunicorn_conf import *  # noqa: F403

bind = "127.0.0.1:8000"


def when_ready(server):
    """Say where the demo page is; on a first run, with the generated publish key in the URL fragment."""
    from sse_notify.devmode import demo_url

    for address in server.cfg.address:
        url = demo_url(address)
        if url:
            server.log.info("sse_notify demo page: %s", url)
