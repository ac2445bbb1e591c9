"""SIGTERM ends every open stream at once: the one place sse_notify touches a signal.

gunicorn's worker turns SIGTERM (stop, or the old workers of a HUP reload) into
"finish current requests, up to ``graceful_timeout``". Open streams never finish by
themselves, so :func:`install` chains onto the worker's own SIGTERM handler: every
:class:`~sse_notify.node.Node` of the process closes its streams (each with a jittered
``retry:``), and the worker exits in seconds; clients resume on the other workers.

Only a server's own graceful handler is extended: with the default disposition
(SIGTERM kills at once) there is nothing to speed up. Nothing is installed by
``SSENotify.init_app``: ``sse_notify.gunicorn_conf`` installs it in each worker
(``post_worker_init``), and the standalone ``create_app`` for its own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import typing as t
import weakref

from .concurrency import spawn

if t.TYPE_CHECKING:
    from .node import Node

__all__ = ["install", "nodes", "register"]

#: Every node of this process (an app's; weak, so a discarded app is forgotten).
_nodes: weakref.WeakSet[Node] = weakref.WeakSet()
#: The process that installed the handler (a forked child installs its own).
_installed_in = -1


def register(node: Node) -> None:
    """Have ``node`` shut down on this process's SIGTERM (once :func:`install` ran)."""
    _nodes.add(node)


def nodes() -> list[Node]:
    """Every node of this process (every app's)."""
    return list(_nodes)


def shutdown_all() -> None:
    """Shut every node of this process down (what SIGTERM does)."""
    for node in list(_nodes):
        node.shutdown()


def install() -> bool:
    """Chain onto this process's SIGTERM handler, if a server set one; whether it is in place.

    Idempotent per process. ``signal.signal`` raises ``ValueError`` outside the main
    thread (a threaded development server): then there is no worker signal to follow.
    """
    global _installed_in
    if _installed_in == os.getpid():
        return True
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return False

    def on_term(signum: int, frame: t.Any) -> None:
        spawn(shutdown_all, name="sse-notify-shutdown")
        previous(signum, frame)

    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, on_term)
        _installed_in = os.getpid()
    return _installed_in == os.getpid()
