"""gunicorn settings for long-lived SSE streams; read by default from this folder.

Command-line flags override these (``gunicorn -k gevent -w 4 -b 0.0.0.0:8000 wsgi:app``).
"""

import glob
import os
import resource
import shutil
import tempfile

# /metrics adds up every worker's values: prometheus_client's multiprocess mode,
# whose directory must be in the environment before prometheus_client is first
# imported (so first thing here). Stale files of an earlier run are removed; the
# directory made here is removed at exit. (A reload re-reads this file in the
# same master: then nothing is removed.)
_metrics_made = False
if os.environ.get("SSE_NOTIFY_METRICS_MASTER") != str(os.getpid()):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
            os.remove(stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-notify-metrics-")
        _metrics_made = True
    os.environ["SSE_NOTIFY_METRICS_MASTER"] = str(os.getpid())

# Raise this process's open-files limit to its hard limit: each stream holds
# one socket, and workers inherit the limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY:
    _hard = 65536
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

bind = "127.0.0.1:8000"
worker_class = "gevent"
# Requests in progress per worker (gunicorn's default is 1000). Live streams are
# handed over to sse_notify's hub and no longer count here (the hub caps them
# below the open-files limit), but a burst of new streams, each replaying,
# does. Leave room for log files and the store.
worker_connections = max(1000, min(100_000, _hard - 256))
# Streams end themselves on SIGTERM/SIGHUP (sse_notify.hub), so a reload takes
# seconds; this is only the backstop for anything else still running.
graceful_timeout = 10
# Heartbeats keep the gevent worker's own notify loop alive; this bounds a worker
# whose event loop is blocked.
timeout = 30


def child_exit(server, worker):
    """Drop the live gauges (open streams) of a worker that exited."""
    from sse_notify.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server):
    """Remove the metrics directory this file made."""
    if _metrics_made:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def when_ready(server):
    """Say where the demo page is; on a first run, with the generated publish key in the URL fragment."""
    from sse_notify.devmode import demo_url

    for address in server.cfg.address:
        url = demo_url(address)
        if url:
            server.log.info("sse_notify demo page: %s", url)
