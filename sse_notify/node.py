"""What one app runs in each process that serves streams: the hub on the store's feed, and its loops.

A :class:`Node` is made with the app, but starts only in the process that serves
streams, at the first stream (gunicorn may import the app in its master before it
forks the workers; a forked child starts its own). Starting joins the hub to the
store's one feed of the process and starts the background loops
(:mod:`~sse_notify.loops`); :meth:`Node.shutdown` stops them and closes every stream.
It is the one place that does either. (Centrifuge calls the same thing its ``Node``.)

Nothing here handles signals: ``sse_notify.gunicorn_conf`` (and ``create_app``) ask
:mod:`~sse_notify.shutdown` to call :meth:`Node.shutdown` on SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import secrets
import socket
import threading
import typing as t

from . import admission, shutdown, telemetry
from .concurrency import pid
from .errors import BrokerError
from .loops import DueWork, Heartbeats, Housekeeping, Loop, PresenceWriter

if t.TYPE_CHECKING:
    from .brokers import Broker
    from .hub import Hub

__all__ = ["Node"]

log = logging.getLogger("sse_notify.node")


def _descriptors_for_streams() -> int:
    """How many streams this process's open-files limit leaves room for (one descriptor each)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    # Keep some for the listener, the store, log files and requests in flight.
    return max(1, soft - max(64, soft // 20))


class Node:
    """One app's hub and loops in one process: started at the first stream, stopped at shutdown."""

    def __init__(
        self,
        broker: Broker,
        hub: Hub,
        *,
        heartbeat: float = 15.0,
        send_timeout: float = 30.0,
        sweep_interval: float = 60.0,
        presence_interval: float = 1.0,
        due_interval: float = 0.25,
        due_lease: float = 30.0,
    ) -> None:
        self.broker = broker
        self.hub = hub
        hub.on_leave = broker.unfollow
        self.presence = PresenceWriter(hub, broker, presence_interval)
        #: Does what falls due in the store's scheduler; runs from the worker's start
        #: (:meth:`start_due_work`), not only once a stream opened.
        self.due = DueWork(broker, due_interval, due_lease)
        self._due_pid = -1
        self.loops: list[Loop] = [
            Heartbeats(hub, heartbeat),
            Housekeeping(hub, broker, send_timeout, sweep_interval),
            self.presence,
        ]
        self._pid = -1
        self._stopped_in = -1
        self._lock = threading.Lock()
        shutdown.register(self)

    @property
    def started(self) -> bool:
        """Whether this process's node is running."""
        return self._pid == pid()

    @property
    def stopping(self) -> bool:
        """Whether this process is shutting down (no stream may stay open)."""
        return self._stopped_in == pid()

    def ensure_started(self) -> None:
        """Join the hub to the store's feed and start the loops, once per process (after a fork, again).

        :raises BrokerError: when the store cannot be reached; the next stream tries again.
        """
        if self._pid == pid():
            return
        with self._lock:
            if self._pid == pid():
                return
            self.hub.reset(_descriptors_for_streams())
            self.hub.positional = self.broker.positional
            if admission.current is not None:  # a gunicorn worker: its accept follows this hub
                admission.current.add(self.hub)
            telemetry.prepare()
            if self.stopping:  # told to stop before its first stream: refuse them all
                self.hub.stopping = True
                self._pid = pid()
                return
            self.presence.worker_id = f"{socket.gethostname()}:{pid()}:{secrets.token_hex(3)}"
            self.broker.subscribe(self.hub)  # may raise BrokerError: then retried at the next stream
            with contextlib.suppress(BrokerError):  # else each new stream asks the store, until a notice
                self.hub.cursor = self.broker.head()
            with contextlib.suppress(BrokerError):  # else each new stream and publish asks the store
                # After subscribing: preferences set from now on come through the feed.
                self.hub.any_preferences = self.hub.any_preferences or self.broker.preferences_exist()
            for loop in self.loops:
                loop.start()
            self._pid = pid()
        self.start_due_work()

    def start_due_work(self) -> None:
        """Start this process's :class:`~sse_notify.loops.DueWork`, once per process (after a fork, again).

        gunicorn's workers start it at once (``sse_notify.gunicorn_conf``'s
        ``post_worker_init``), so what fell due while no worker ran is done at start;
        elsewhere the first stream starts it.
        """
        with self._lock:
            if self._due_pid == pid() or self.stopping:
                return
            self._due_pid = pid()
        self.due.start()

    def shutdown(self) -> None:
        """End every open stream now and refuse new ones; clients reconnect elsewhere and resume."""
        self._stopped_in = pid()
        self.hub.stopping = True
        for loop in (*self.loops, self.due):
            loop.stop()
        count = self.hub.close_all("shutdown")
        telemetry.flush()
        log.info("closed %d streams for shutdown", count)
        if self.started:
            self.presence.leave()

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over every worker and host (users with none left out).

        This worker's own changes are written first, so its streams count at
        once; other workers' within the presence interval.
        """
        if self.started and self.hub.changed and not self.stopping:
            self.presence.write()
        return self.broker.presence_counts(user_ids)
