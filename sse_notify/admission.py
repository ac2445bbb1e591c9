"""Which gunicorn worker takes the next connection: one that is full pauses its accept while another has room.

The workers of one gunicorn master share one listening socket, and the kernel hands
each new connection to whichever worker accepts first. Left alone, one worker fills up
and refuses streams ("overloaded") while another still has room: tried from outside with
six workers and 99,996 streams, 903 were refused against 114,000 places (issue #18).

So the workers share a small table (:class:`Table`, an anonymous shared ``mmap`` made by
the master before it forks, in ``sse_notify.gunicorn_conf``): one row per worker with its
pid, its open streams, its capacity and a heartbeat. Each worker writes its own row as
streams open and close, and reads the others' (a few integers; no lock: each row has one
writer). A worker stops accepting (gevent's ``StreamServer.stop_accepting``: the
connection stays in the kernel's queue for the others) while it is full and a live peer
is not (:func:`should_pause`). So a stream is refused only when every worker is full, and
then every worker accepts again and refuses with the usual retry-friendly close, counted in
``sse_notify_evictions_total{reason="overloaded"}``.

Only a full worker pauses. Pausing to keep the workers' counts even was tried: after a
burst of new streams the workers ahead stayed paused until the one behind caught up, which
with no new streams is never, and every publish went to that one worker.

A worker's load is its open streams plus the connections it accepted that have not yet
opened a stream or finished their first request (``pending``): gevent accepts up to 100
connections per wakeup, and a stream opens only once its request is parsed and authorized,
so counting streams alone let a worker one short of full take a burst and refuse most of it
while its peers had room. A pending connection is counted as it is accepted, and the accept
loop stops at once when that fills the worker.

A peer whose heartbeat is older than :data:`STALE` seconds (stuck, or dead and not yet
reaped) does not count: a stuck worker never makes the others stop accepting for long.

Nothing here is gunicorn's public API: the gevent worker builds its ``StreamServer`` in
``run()``, so :func:`install` (``post_worker_init``) puts a subclass in its place that
registers itself and stays paused while told to. Without ``sse_notify.gunicorn_conf``'s
hooks (another server, another worker class) nothing pauses, as before.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
import typing as t

if t.TYPE_CHECKING:
    from .hub import Hub

__all__ = ["STALE", "Admission", "Table", "install", "should_pause"]

log = logging.getLogger("sse_notify.admission")

#: Rows in the table: workers of one master (old and new ones during a reload) at most.
ROWS = 512
#: A peer silent this long (seconds) is not counted on to take connections.
STALE = 2.0
#: How often (seconds) a worker writes its heartbeat and looks at the others.
TICK = 0.25

# Columns of a row (64-bit integers).
_PID, _STREAMS, _CAPACITY, _BEAT = range(4)
_WIDTH = 4
#: ``_PID`` of a row the master gave to a worker that has not written it yet.
_RESERVED = -1


def _now_ms() -> int:
    """Milliseconds on the system-wide monotonic clock (the same in every process)."""
    return time.monotonic_ns() // 1_000_000


class Table:
    """One row per worker of a gunicorn master, in memory the master and its workers share."""

    def __init__(self, rows: int = ROWS) -> None:
        self.rows = rows
        # Anonymous and MAP_SHARED: the master and every worker forked from it see one table.
        # The last cell is how many rows were ever handed out (the others read only those).
        self._map = mmap.mmap(-1, (rows * _WIDTH + 1) * 8)
        self._cells = memoryview(self._map).cast("q")
        self._high = rows * _WIDTH

    # -- the master: which worker has which row ------------------------------

    def claim(self) -> int | None:
        """A free row for a worker about to be forked (``None``: none left)."""
        cells = self._cells
        for row in range(self.rows):
            base = row * _WIDTH
            if cells[base + _PID] == 0:
                cells[base + _STREAMS] = cells[base + _CAPACITY] = cells[base + _BEAT] = 0
                cells[base + _PID] = _RESERVED
                cells[self._high] = max(cells[self._high], row + 1)
                return row
        return None

    def release(self, row: int) -> None:
        """Free a row whose worker exited."""
        self._cells[row * _WIDTH + _PID] = 0

    # -- a worker ----------------------------------------------------------------

    def own(self, row: int) -> None:
        """Mark ``row`` as this process's (a worker, as it starts)."""
        self._cells[row * _WIDTH + _PID] = os.getpid()

    def write(self, row: int, streams: int, capacity: int, *, beat: bool = False) -> None:
        """Write this worker's row."""
        cells = self._cells
        base = row * _WIDTH
        cells[base + _STREAMS] = streams
        cells[base + _CAPACITY] = capacity
        if beat:
            cells[base + _BEAT] = _now_ms()

    def peers(self, row: int) -> list[tuple[int, int]]:
        """``(streams, capacity)`` of every other live worker (heartbeat within :data:`STALE`)."""
        cells = self._cells
        oldest = _now_ms() - int(STALE * 1000)
        out = []
        for other in range(cells[self._high]):
            base = other * _WIDTH
            if other == row or cells[base + _PID] <= 0:
                continue
            if cells[base + _BEAT] >= oldest and cells[base + _CAPACITY] > 0:
                out.append((cells[base + _STREAMS], cells[base + _CAPACITY]))
        return out


def should_pause(streams: int, capacity: int, peers: t.Iterable[tuple[int, int]]) -> bool:
    """Whether a worker with ``streams`` of ``capacity`` should leave new connections to its ``peers``.

    It should when it is full and a peer is not. When every worker is full none pauses:
    each accepts and refuses, so clients are told to come back later, never left waiting.
    """
    return streams >= capacity and any(s < c for s, c in peers)


class Admission:
    """This worker's row, its listening servers, and whether they accept."""

    def __init__(self, table: Table, row: int) -> None:
        self.table = table
        self.row = row
        self.hubs: list[Hub] = []
        self.servers: list[t.Any] = []
        self.paused = False
        #: Connections accepted here that have not yet opened a stream or finished a request.
        self.pending = 0
        self._unsettled: set[t.Any] = set()
        from gevent import getcurrent  # here: importing this module (the master, a client) needs no gevent

        self._current = getcurrent
        #: Streams open on the host (this worker and its live peers), as of the last tick.
        self.host_streams = 0
        #: How many times this worker paused its accept.
        self.pauses = 0
        self._timer: t.Any = None

    # -- what the hubs say ----------------------------------------------------------

    def add(self, hub: Hub) -> None:
        """Count ``hub``'s streams in this worker's row (a node's hub, as it starts)."""
        if hub not in self.hubs:
            self.hubs.append(hub)
        hub.on_count = self.counted
        self.tick()

    def _load(self) -> tuple[int, int]:
        """This worker's load (streams and pending connections) and capacity."""
        streams, capacity = self.pending, 0
        for hub in self.hubs:
            streams += len(hub.streams)
            capacity = max(capacity, _room(hub))  # one descriptor limit for the process
        return streams, capacity

    def counted(self, streams: int) -> None:
        """A stream opened or closed here: write the row; a worker that just filled up stops at once."""
        self._settle(self._current())  # a stream opened by a pending connection is counted as a stream now
        if len(self.hubs) != 1:
            load, capacity = self._load()
        else:
            load, capacity = streams + self.pending, _room(self.hubs[0])
        self._write(load, capacity)

    def _write(self, load: int, capacity: int) -> None:
        self.table.write(self.row, load, capacity)
        if load >= capacity and not self.paused:
            self.decide(load, capacity)

    # -- connections not yet settled --------------------------------------------------

    def accepted(self) -> None:
        """A connection was accepted: it counts until it opens a stream or ends its first request.

        The row is written only once that fills the worker (the next stream writes it anyway).
        """
        self.pending += 1
        hubs = self.hubs
        if len(hubs) == 1:
            hub = hubs[0]
            load, capacity = len(hub.streams) + self.pending, _room(hub)
        elif hubs:
            load, capacity = self._load()
        else:
            return
        if load >= capacity and not self.paused:
            self._write(load, capacity)

    def settling(self, handle: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        """``handle`` (a connection's greenlet), settling its connection when its first request is done."""

        def handle_settled(*args: t.Any) -> t.Any:
            me = self._current()
            self._unsettled.add(me)
            try:
                return handle(*args)
            finally:
                self._settle(me)

        return handle_settled

    def settle(self) -> None:
        """The current connection's request is done: it no longer counts as pending."""
        self._settle(self._current())

    def _settle(self, connection: t.Any) -> None:
        if connection in self._unsettled:
            self._unsettled.discard(connection)
            self.pending -= 1

    # -- accepting ------------------------------------------------------------------

    def decide(self, load: int, capacity: int) -> None:
        """Pause or resume this worker's accept by :func:`should_pause`."""
        if not capacity:
            return
        peers = self.table.peers(self.row)
        self.host_streams = load + sum(s for s, _ in peers)
        pause = should_pause(load, capacity, peers)
        if pause != self.paused:
            self.paused = pause
            if pause:
                self.pauses += 1
            for server in self.servers:
                if pause:
                    server.stop_accepting()
                elif server.started and not server.closed:
                    server.start_accepting()

    def tick(self) -> None:
        """Write the heartbeat, look at the peers again, and tell the hubs the host's streams."""
        streams, capacity = self._load()
        self.table.write(self.row, streams, capacity, beat=True)
        self.decide(streams, capacity)
        for hub in self.hubs:
            hub.host_streams = self.host_streams

    def run(self) -> None:
        """:meth:`tick` every :data:`TICK` seconds, for the life of the worker (a greenlet)."""
        import gevent

        while True:
            try:
                self.tick()
            except Exception:  # never let the accept stay paused because of a bug here
                log.exception("admission tick failed; accepting")
                self.paused = False
                for server in self.servers:
                    if server.started and not server.closed:
                        server.start_accepting()
            gevent.sleep(TICK)


def _room(hub: Hub) -> int:
    """How many streams ``hub`` takes: none once it is stopping (its worker is going away)."""
    return 0 if hub.stopping else hub.capacity


#: This process's admission (a gevent worker of a master with a table), else ``None``.
current: Admission | None = None


def install(table: Table | None, worker: t.Any) -> Admission | None:
    """In a gunicorn gevent worker, before its ``run()``: register its servers and start the ticks."""
    global current
    row = getattr(worker, "sse_notify_row", None)
    if table is None or row is None:
        return None
    try:
        from gunicorn.workers import ggevent  # type: ignore[import-untyped]
    except ImportError:
        return None
    if not isinstance(worker, ggevent.GeventWorker) or worker.server_class is not None:
        return None  # only gunicorn's plain gevent worker builds the servers we know
    admission = current = Admission(table, row)
    base = ggevent.StreamServer

    class _Server(base):  # type: ignore[misc, valid-type]
        """gevent's ``StreamServer``, registered here, that does not accept while paused."""

        def set_handle(self, handle: t.Any) -> None:
            super().set_handle(None if handle is None else admission.settling(handle))

        def start(self) -> None:
            admission.servers.append(self)
            super().start()

        def start_accepting(self) -> None:
            if not admission.paused:
                super().start_accepting()

        def do_read(self) -> t.Any:
            # gevent accepts up to ``max_accept`` connections a wakeup: none once paused.
            return None if admission.paused else super().do_read()

        def do_handle(self, *args: t.Any) -> None:
            admission.accepted()
            super().do_handle(*args)

    ggevent.StreamServer = _Server
    handle_request = worker.handle_request

    def handle_request_settled(*args: t.Any) -> t.Any:
        try:
            return handle_request(*args)
        finally:
            admission.settle()

    worker.handle_request = handle_request_settled
    import gevent

    table.own(row)
    table.write(row, 0, 0, beat=True)
    gevent.spawn(admission.run)
    return admission
