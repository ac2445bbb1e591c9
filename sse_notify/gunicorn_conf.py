"""gunicorn settings and hooks for serving sse_notify: ``from sse_notify.gunicorn_conf import *``.

Put that line first in a gunicorn config file (the repository's
``gunicorn.conf.py`` does; so does ``examples/notify_app/gunicorn.conf.py``).
Settings after it, or command-line flags, override these.

Importing this module also sets up ``/metrics`` for several workers:
prometheus_client's multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` in the
environment before prometheus_client is first imported, which sse_notify
does only when a worker first counts something. The directory is made here
(or yours is emptied of an earlier run's files), and removed at exit if made
here. A reload re-reads the config in the same master: then nothing is
removed, and the workers' files stay.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import tempfile
import typing as t

from .admission import Table

__all__ = [
    "backlog",
    "child_exit",
    "graceful_timeout",
    "on_exit",
    "post_worker_init",
    "pre_fork",
    "timeout",
    "worker_class",
    "worker_connections",
]

_MASTER_KEY = "SSE_NOTIFY_METRICS_MASTER"


def _metrics_dir() -> bool:
    """Give this master's workers one fresh metrics directory; whether it was made here."""
    if os.environ.get(_MASTER_KEY) == str(os.getpid()):
        return os.environ.get("SSE_NOTIFY_METRICS_MADE") == "1"  # a reload: keep it
    made = False
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
            os.remove(stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-notify-metrics-")
        made = True
    os.environ[_MASTER_KEY] = str(os.getpid())
    os.environ["SSE_NOTIFY_METRICS_MADE"] = "1" if made else "0"
    return made


def _open_files() -> int:
    """Raise this process's open-files limit to its hard limit (workers inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 65536
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


_made_metrics_dir = _metrics_dir()
_files = _open_files()
#: The workers' shared rows (streams, capacity): a full worker leaves new connections to
#: the others (``sse_notify.admission``). Made once per master (a reload keeps this module).
_table = Table()

worker_class = "gevent"
# The kernel's queue of connections not accepted yet (gunicorn's default is 2048): a
# reconnect storm after a restart arrives faster than the workers accept. The kernel caps
# it at net.core.somaxconn (4096 by default on Linux 5.4 and later).
backlog = 4096
# Requests in progress per worker (gunicorn's default is 1000). Live streams are
# handed over to sse_notify's hub and no longer count here (the hub caps them
# below the open-files limit), but a burst of new streams, each replaying,
# does. Leave room for log files and the store.
worker_connections = max(1000, min(100_000, _files - 256))
# Streams end themselves on SIGTERM/SIGHUP (post_worker_init below), so a reload
# takes seconds; this is only the backstop for anything else still running.
graceful_timeout = 10
# Heartbeats keep the gevent worker's own notify loop alive; this bounds a worker
# whose event loop is blocked.
timeout = 30


def post_worker_init(worker: t.Any) -> None:
    """In each worker, once its app is loaded: SIGTERM closes every stream, tokens stay out of logs.

    A full worker stops accepting while another has room (``sse_notify.admission``). The
    metrics are imported here too (this worker's multiprocess files), not inside its first
    request, and every app's scheduler starts (what falls due is done even while no stream
    is open). A config of your own that defines ``post_worker_init``, ``pre_fork`` or
    ``child_exit`` too should call this module's.
    """
    from . import admission, redact, shutdown, telemetry

    redact.install()
    shutdown.install()
    telemetry.prepare()
    accepting = admission.install(_table, worker)
    for node in shutdown.nodes():
        if accepting is not None:
            accepting.add(node.hub)
        node.start_due_work()


def pre_fork(server: t.Any, worker: t.Any) -> None:
    """Give the worker about to be forked its row of the shared table (``sse_notify.admission``)."""
    worker.sse_notify_row = _table.claim()


def child_exit(server: t.Any, worker: t.Any) -> None:
    """Drop the live gauges (open streams) and the admission row of a worker that exited."""
    from .metrics import worker_exited

    worker_exited(worker.pid)
    row = getattr(worker, "sse_notify_row", None)
    if row is not None:
        _table.release(row)


def on_exit(server: t.Any) -> None:
    """Remove the metrics directory made at start."""
    if _made_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
