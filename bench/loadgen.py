"""A load generator holding many thousands of SSE streams from a few processes.

``LoadGen(host, port, paths, processes=2)`` opens one ``GET`` stream per entry
of ``paths`` (connection ``i`` uses ``paths[i]``), spread over ``processes``
worker processes (``paths[p::processes]`` for worker ``p``). Typical use::

    paths = format_paths("/connection/{user}?token={token}", [{"user": u, "token": tok}, ...])
    gen = LoadGen("127.0.0.1", 8000, paths, processes=2)
    gen.start()
    gen.wait_connected(60)            # streams answered with 200 so far
    ... publish notices carrying {"sent_at": time.time()} ...
    gen.wait_events(len(paths), 30)   # every stream had it
    stats = gen.collect()             # merged counters, latencies, connect times
    gen.stop()

Design choice: raw non-blocking sockets on one level-triggered ``epoll`` per
worker process, no gevent. A stream costs a socket and one small state object
(``__slots__``), and an arriving chunk costs one ``recv`` plus a hand-written
parse in the worker's single loop; gevent would add a greenlet (its own stack
slice and switch per wake-up) and its hub's bookkeeping per socket for no gain,
since nothing here blocks. That is the most streams and events per CPU second
a pure-Python client gets; the client's CPU time is measured and reported so a
client-bound run is recognisable.

Every connection binds its socket to ``('127.0.0.X', 0)`` for X in 2..250
before connecting (when the server is on loopback), with
``IP_BIND_ADDRESS_NO_PORT`` so the port is picked at connect time against the
full 4-tuple: no ephemeral-port exhaustion. Each worker holds at most
``MAX_PER_PROCESS`` sockets (under a 20,000 open-files limit) and raises its
own soft ``RLIMIT_NOFILE`` as needed.

The HTTP/1.1 response and the event stream are parsed incrementally here
(status line must be 200; chunked, Content-Length and read-until-close
bodies; SSE lines ending in LF, CR or CRLF; an event ends at a blank line).
This parser is deliberately small and fast and is *not* a conformance
reference: the test suite checks the server with real client libraries
(httpx, httpx-sse, h11, a browser's EventSource).

For each dispatched event named ``event_name`` (default ``"notice"``; ``None``
takes every event with data) the JSON data is parsed and the publisher's
timestamp is looked up at ``data["data"]["sent_at"]`` (sse_notify's notice
envelope) then ``data["sent_at"]`` (servers that pass the publisher's JSON
through). Latency is ``time.time() - sent_at`` at the ``recv`` that completed
the event, so it includes this client's own queueing.

Bounded: at most ``max_inflight`` connects (or requests without response
headers yet) per worker at a time, a connect/response-header timeout, a
``max_runtime`` after which workers close everything and exit, workers exit
when the parent goes away (pipe EOF or a changed ``os.getppid()``), latency
samples capped (``max_samples`` overall), per-notice fan-out records capped.

Servers that send the response headers only with the first event (flask-sse
does) never answer a stream that has nothing to say; pass
``early_headers=False`` so a connection stops counting as in flight (and
against ``connect_timeout``) once its request is written. ``held`` counts
those connections, ``open`` only the ones answered with a 200.

:meth:`LoadGen.redial` closes chosen streams and dials them again (the churn
benchmark): the workers close them on their side, count them in ``redialed``
(not in ``closed``, which counts closes by the server) and queue new
connections for the same paths.

The parent talks to workers over one ``Pipe`` each (request/response only,
so nothing piles up unread) and reads live counters from shared memory
(``RawArray``), so polling progress never blocks a worker. The waiting
methods sleep with ``time.sleep``: from an asyncio program call them in an
executor.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import math
import multiprocessing as mp
import os
import resource
import select
import socket
import time
import typing as t
from array import array
from collections import deque

__all__ = ["MAX_PER_PROCESS", "LoadGen", "connect_rate", "format_paths", "percentile", "summarize"]

#: Open sockets per worker process, kept under the 20,000 open-files limit.
MAX_PER_PROCESS = 18_000
#: Default client source addresses on loopback (127.0.0.1 is left to others).
LOOPBACK_SOURCES = tuple(f"127.0.0.{x}" for x in range(2, 251))
#: Linux ``IP_BIND_ADDRESS_NO_PORT`` (defer the port choice of a bound socket to connect()).
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_MAX_NOTICES = 100_000
_MAX_ERROR_KINDS = 50

# Shared counters, one row per worker.
(
    C_OPEN,  # streams open now (200 received, not closed)
    C_CONNECTED,  # streams that ever got a 200
    C_FAILED,  # connects that failed for good (after retries)
    C_CLOSED,  # open streams the server (or the network) closed
    C_EVENTS,  # matching events received
    C_TIMED,  # of which carried a sent_at
    C_BYTES,  # bytes received
    C_CPU_US,  # own CPU time (user + system), microseconds
    C_DIALED,  # connection attempts started
    C_STATE,  # 0 starting, 1 dialling, 2 every connection settled, 3 exited
    C_HELD,  # connections whose request went out and that are still open (answered or not)
    C_REDIALED,  # streams closed on purpose by redial() (not counted in C_CLOSED)
    C_RECONNECTS,  # dials again after a stream ended or a dial failed (``reconnect=True``)
    C_DUPLICATES,  # events whose id was not above the newest id the stream had (``reconnect=True``)
    N_COUNTERS,
) = range(15)

# Connection phases.
_CONNECTING, _HEAD, _BODY, _DONE = range(4)
# Body framings / chunked decoder states.
_IDENTITY, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER = range(6)


def format_paths(template: str, rows: t.Iterable[t.Mapping[str, t.Any]]) -> list[str]:
    """``[template.format(**row) for row in rows]``: picklable paths for any start method."""
    return [template.format(**row) for row in rows]


def percentile(values: t.Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``; ``nan`` when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def connect_rate(times: t.Sequence[float]) -> float:
    """New streams per second between the first and the last successful connect."""
    if len(times) < 2:
        return math.nan
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else math.inf


def summarize(stats: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A small printable digest of :meth:`LoadGen.collect`'s result."""
    lat = stats["latencies"]
    notices = stats["notices"]
    fanout = [last - sent for sent, (_count, _first, last) in notices.items()]
    return {
        "connected": stats["connected"],
        "open": stats["open"],
        "failed": stats["failed"],
        "closed": stats["closed"],
        "held": stats["held"],
        "redialed": stats["redialed"],
        "connect_rate_per_s": round(connect_rate(stats["connect_times"]), 1),
        "events": stats["events"],
        "latency_ms": {
            "p50": round(percentile(lat, 50) * 1000, 2),
            "p99": round(percentile(lat, 99) * 1000, 2),
            "max": round(max(lat) * 1000, 2) if lat else math.nan,
            "samples": len(lat),
        },
        "fanout_to_last_ms_max": round(max(fanout) * 1000, 2) if fanout else math.nan,
        "client_cpu_s": round(stats["cpu"], 3),
        "bytes": stats["bytes"],
        "errors": stats["errors"],
    }


class LoadGen:
    """Hold ``len(paths)`` SSE streams to ``host:port`` from ``processes`` worker processes.

    :param paths: the request target of each connection (path and query).
    :param event_name: the SSE event type whose data carries ``sent_at``;
        ``None`` takes every event with data.
    :param source_addresses: local addresses to bind, round-robin; the default
        is 127.0.0.2..250 when ``host`` is a loopback address, else no bind.
    :param max_inflight: per worker, connections dialled but without response
        headers yet.
    :param connect_timeout: seconds from dial to the response headers.
    :param retries: extra attempts for a connection that failed before a 200.
    :param max_runtime: seconds after :meth:`start` at which workers close
        everything and exit, whatever happens.
    :param max_samples: latency samples kept overall (split between workers).
    :param reconnect: EventSource's reconnection: a stream that ends or breaks, or a dial
        that fails before its answer, is dialled again after the last ``retry:`` the server
        sent (3 s before any, as browsers), with ``Last-Event-ID``; a status other than 200
        fails for good, as EventSource does. Each event's numeric ``id`` must be above the
        newest the stream had (else it counts in ``duplicates``). ``retries`` is not used.
    :param early_headers: the server answers a stream at once (True), so a
        connection is in flight until its response headers; False for servers
        that answer only with the first event (in flight until the request is
        written, no response timeout).
    """

    def __init__(
        self,
        host: str,
        port: int,
        paths: t.Sequence[str],
        *,
        processes: int = 2,
        event_name: str | None = "notice",
        headers: t.Mapping[str, str] | None = None,
        source_addresses: t.Sequence[str] | None = None,
        max_inflight: int = 256,
        connect_timeout: float = 15.0,
        retries: int = 2,
        max_runtime: float = 600.0,
        max_samples: int = 2_000_000,
        early_headers: bool = True,
        reconnect: bool = False,
        start_method: str = "spawn",
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        per_process = -(-len(paths) // processes)
        if per_process > MAX_PER_PROCESS:
            need = -(-len(paths) // MAX_PER_PROCESS)
            raise ValueError(
                f"{len(paths)} connections need at least {need} processes "
                f"({MAX_PER_PROCESS} sockets per process at most)"
            )
        if source_addresses is None:
            source_addresses = LOOPBACK_SOURCES if host.startswith("127.") or host == "localhost" else ()
        self.host = host
        self.port = port
        self.paths = list(paths)
        self.count = len(self.paths)
        self.processes = processes
        self.max_runtime = max_runtime
        self._config = {
            "host": host,
            "port": port,
            "event_name": event_name,
            "headers": dict(headers or {}),
            "sources": list(source_addresses),
            "max_inflight": max_inflight,
            "connect_timeout": connect_timeout,
            "retries": retries,
            "max_runtime": max_runtime,
            "max_samples": max(1, max_samples // processes),
            "early_headers": early_headers,
            "reconnect": reconnect,
        }
        self._ctx: t.Any = mp.get_context(start_method)
        self._counters = self._ctx.RawArray("q", processes * N_COUNTERS)
        self._workers: list[t.Any] = []
        self._pipes: list[t.Any] = []
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start the workers; each dials its share as fast as ``max_inflight`` allows."""
        if self._workers:
            raise RuntimeError("already started")
        self._started_at = time.time()
        for p in range(self.processes):
            parent_end, child_end = self._ctx.Pipe()
            indexes = list(range(p, self.count, self.processes))
            jobs = [(i, self.paths[i]) for i in indexes]
            proc = self._ctx.Process(
                target=_worker_main,
                args=(p, jobs, self._config, child_end, self._counters),
                name=f"loadgen-{p}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self._workers.append(proc)
            self._pipes.append(parent_end)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every stream and end the workers (terminated, then killed, if they linger)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("stop",))
        deadline = time.monotonic() + timeout
        for proc in self._workers:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._workers:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for pipe in self._pipes:
            pipe.close()
        self._workers = []
        self._pipes = []

    def __enter__(self) -> LoadGen:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- live progress (shared memory, never blocks a worker) -------------

    def counters(self) -> dict[str, int]:
        """Live totals: open, connected, failed, closed, events, timed, bytes, dialed, held, redialed,
        reconnects, duplicates."""
        c = self._counters
        names = {
            "open": C_OPEN,
            "connected": C_CONNECTED,
            "failed": C_FAILED,
            "closed": C_CLOSED,
            "events": C_EVENTS,
            "timed": C_TIMED,
            "bytes": C_BYTES,
            "dialed": C_DIALED,
            "held": C_HELD,
            "redialed": C_REDIALED,
            "reconnects": C_RECONNECTS,
            "duplicates": C_DUPLICATES,
        }
        return {name: sum(c[p * N_COUNTERS + k] for p in range(self.processes)) for name, k in names.items()}

    def cpu_seconds(self) -> float:
        """The workers' own CPU time so far (as last published by each worker)."""
        c = self._counters
        return float(sum(c[p * N_COUNTERS + C_CPU_US] for p in range(self.processes))) / 1e6

    def cpu_per_process(self) -> list[float]:
        """Each worker's own CPU time so far, seconds (as last published; at most 0.5 s old)."""
        c = self._counters
        return [c[p * N_COUNTERS + C_CPU_US] / 1e6 for p in range(self.processes)]

    def alive(self) -> int:
        """How many worker processes are still running."""
        return sum(proc.is_alive() for proc in self._workers)

    def _settled(self) -> bool:
        c = self._counters
        return all(
            c[p * N_COUNTERS + C_STATE] >= 2 or not proc.is_alive() for p, proc in enumerate(self._workers)
        )

    def wait_connected(self, timeout: float, target: int | None = None) -> int:
        """Wait until ``target`` (default: all) streams are open, or every connection settled.

        :return: the number of streams open now.
        """
        target = self.count if target is None else target
        deadline = time.monotonic() + timeout
        while True:
            now_open = self.counters()["open"]
            if now_open >= target or self._settled() or time.monotonic() >= deadline:
                return now_open
            time.sleep(0.02)

    def wait_events(self, total: int, timeout: float) -> int:
        """Wait until the workers received ``total`` matching events overall; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.counters()["events"]
            if (
                events >= total
                or time.monotonic() >= deadline
                or not any(p.is_alive() for p in self._workers)
            ):
                return events
            time.sleep(0.005)

    def wait_counter(self, name: str, target: int, *, stall: float, limit: float) -> int:
        """Wait until counter ``name`` reaches ``target``, or it made no progress for ``stall``
        seconds, or ``limit`` seconds passed, or every worker exited; return its value."""
        deadline = time.monotonic() + limit
        last, last_change = -1, time.monotonic()
        while True:
            value = self.counters()[name]
            now = time.monotonic()
            if value != last:
                last, last_change = value, now
            if value >= target or now >= deadline or now - last_change >= stall or not self.alive():
                return value
            time.sleep(0.01)

    # -- churn ----------------------------------------------------------------

    def redial(self, indexes: t.Iterable[int], timeout: float = 30.0) -> int:
        """Close the connections ``indexes`` (positions in ``paths``) and dial them again.

        Only connections that are open or waiting for their answer are closed; each is
        replaced by a fresh connection to the same path (retries start over). Returns how
        many were closed. Follow the reconnection with the ``open``/``held`` counters.
        """
        share: list[list[int]] = [[] for _ in range(self.processes)]
        for i in indexes:
            if not 0 <= i < self.count:
                raise IndexError(f"no connection {i} (there are {self.count})")
            share[i % self.processes].append(i)
        asked = []
        for p, pipe in enumerate(self._pipes):
            if share[p]:
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(("redial", share[p]))
                    asked.append(pipe)
        closed = 0
        deadline = time.monotonic() + timeout
        for pipe in asked:
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    closed += int(pipe.recv())
            except (EOFError, OSError):
                continue
        return closed

    def indexes(self, timeout: float = 30.0) -> tuple[list[int], list[int]]:
        """``(open, held)``: the positions in ``paths`` of streams open now (answered 200), and of
        connections whose request went out and that are still open (answered or not)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("indexes",))
        opened: list[int] = []
        held: list[int] = []
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    part_open, part_held = pipe.recv()
                    opened += part_open
                    held += part_held
            except (EOFError, OSError):
                continue
        return sorted(opened), sorted(held)

    # -- results ------------------------------------------------------------

    def collect(self, *, reset: bool = False, timeout: float = 30.0) -> dict[str, t.Any]:
        """Every worker's stats merged.

        Keys: ``open``, ``connected``, ``failed``, ``closed``, ``events``,
        ``timed``, ``bytes``, ``held``, ``redialed``, ``cpu`` (seconds, summed
        over workers), ``cpu_per_worker`` (seconds, each worker's),
        ``cpu_first_dial_per_worker`` (each worker's CPU seconds when it first dialled),
        ``first_dial`` (Unix time of the first connection attempt, or None),
        ``latencies`` (``array('d')``, seconds), ``latencies_dropped``,
        ``connect_times`` (sorted Unix times of each 200),
        ``notices`` (``{sent_at: [deliveries, first_arrival, last_arrival]}``),
        ``errors`` (``{kind: count}``), ``workers`` (how many answered).

        :param reset: clear latencies, notices and event counts afterwards
            (e.g. after a warm-up).
        """
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("collect", reset))
        parts = []
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    parts.append(pipe.recv())
            except (EOFError, OSError):
                continue
        return _merge(parts)


_TOTALS = (
    "open",
    "connected",
    "failed",
    "closed",
    "events",
    "timed",
    "bytes",
    "held",
    "redialed",
    "reconnects",
    "duplicates",
)


def _merge(parts: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {key: 0 for key in _TOTALS}
    out["cpu"] = 0.0
    out["cpu_per_worker"] = [part["cpu"] for part in parts]
    out["cpu_first_dial_per_worker"] = [part["cpu_first_dial"] for part in parts]
    dials = [part["first_dial"] for part in parts if part.get("first_dial")]
    out["first_dial"] = min(dials) if dials else None
    out["latencies_dropped"] = 0
    latencies = array("d")
    connect_times = array("d")
    notices: dict[float, list[float]] = {}
    errors: dict[str, int] = {}
    for part in parts:
        for key in (*_TOTALS, "latencies_dropped"):
            out[key] += part[key]
        out["cpu"] += part["cpu"]
        latencies.extend(part["latencies"])
        connect_times.extend(part["connect_times"])
        for sent, (n, first, last) in part["notices"].items():
            rec = notices.get(sent)
            if rec is None:
                notices[sent] = [n, first, last]
            else:
                rec[0] += n
                rec[1] = min(rec[1], first)
                rec[2] = max(rec[2], last)
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    out["latencies"] = latencies
    out["connect_times"] = array("d", sorted(connect_times))
    out["notices"] = notices
    out["errors"] = errors
    out["workers"] = len(parts)
    return out


# ---------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------


class _Conn:
    __slots__ = (
        "attempts",
        "body",
        "buf",
        "data",
        "dialed_at",
        "event",
        "id_buf",
        "index",
        "last_id",
        "line",
        "newest",
        "path",
        "phase",
        "remaining",
        "retry",
        "sent",
        "skip_lf",
        "sock",
        "started",
        "tosend",
    )

    def __init__(self, index: int, path: str, attempts: int, before: _Conn | None = None) -> None:
        self.index = index
        self.path = path
        self.attempts = attempts
        # EventSource's state, kept across reconnections (``before``: the last connection).
        self.last_id: bytes = before.last_id if before else b""  # sent as Last-Event-ID
        self.id_buf = self.last_id  # the id field read so far (set as last_id at a blank line)
        self.retry: int = before.retry if before else 3000  # ms before dialling again
        self.newest: int = before.newest if before else 0  # the newest numeric event id seen
        self.sock: socket.socket | None = None
        self.phase = _CONNECTING
        self.dialed_at = 0.0
        self.tosend = b""
        self.buf = b""  # header bytes, then undecoded chunked framing
        self.body = _IDENTITY
        self.remaining = 0  # Content-Length left, or bytes left in the current chunk
        self.sent = False  # the request went out whole (the connection is "held")
        self.started = False  # a BOM may still come
        self.skip_lf = False  # the last SSE byte was a CR: drop a leading LF
        self.line = b""  # an SSE line not ended yet
        self.event = b""
        self.data: list[bytes] = []


class _Worker:
    def __init__(
        self, slot: int, jobs: list[tuple[int, str]], config: dict[str, t.Any], pipe: t.Any, counters: t.Any
    ):
        self.slot = slot
        self.base = slot * N_COUNTERS
        self.counters = counters
        self.pipe = pipe
        self.config = config
        self.host = config["host"]
        self.port = config["port"]
        name = config["event_name"]
        self.event_name: bytes | None = None if name is None else name.encode()
        self.sources: list[str] = config["sources"]
        self.max_inflight: int = config["max_inflight"]
        self.connect_timeout: float = config["connect_timeout"]
        self.retries: int = config["retries"]
        self.max_samples: int = config["max_samples"]
        self.early_headers: bool = config.get("early_headers", True)
        self.reconnect: bool = config.get("reconnect", False)
        #: Connections waiting for their reconnection time: ``(due, n, conn)``, a heap.
        self.later: list[tuple[float, int, _Conn]] = []
        self.later_n = 0
        extra = "".join(f"{k}: {v}\r\n" for k, v in config["headers"].items())
        self.request_head = f"Host: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n"
        self.request_head += f"Cache-Control: no-cache\r\n{extra}\r\n"
        self.queue: deque[_Conn] = deque(_Conn(i, path, 0) for i, path in jobs)
        self.conns: dict[int, _Conn] = {}
        self.pending: dict[int, _Conn] = {}  # dialled, no response headers yet
        self.ep = select.epoll()
        self.stats = dict.fromkeys(_TOTALS, 0)
        self.dialed = 0
        self.first_dial: float | None = None
        self.cpu_first_dial = 0.0
        self.by_index: dict[int, _Conn] = {}
        self.latencies = array("d")
        self.dropped = 0
        self.connect_times = array("d")
        self.notices: dict[float, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.now = time.time()

    # -- bookkeeping --

    def error(self, kind: str) -> None:
        if kind in self.errors or len(self.errors) < _MAX_ERROR_KINDS:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def publish(self, state: int | None = None) -> None:
        c, b, s = self.counters, self.base, self.stats
        c[b + C_OPEN] = s["open"]
        c[b + C_CONNECTED] = s["connected"]
        c[b + C_FAILED] = s["failed"]
        c[b + C_CLOSED] = s["closed"]
        c[b + C_EVENTS] = s["events"]
        c[b + C_TIMED] = s["timed"]
        c[b + C_BYTES] = s["bytes"]
        c[b + C_DIALED] = self.dialed
        c[b + C_HELD] = s["held"]
        c[b + C_REDIALED] = s["redialed"]
        c[b + C_RECONNECTS] = s["reconnects"]
        c[b + C_DUPLICATES] = s["duplicates"]
        if state is not None:
            c[b + C_STATE] = state

    def publish_cpu(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime + ru.ru_stime
        self.counters[self.base + C_CPU_US] = int(cpu * 1e6)
        return cpu

    def snapshot(self, reset: bool) -> dict[str, t.Any]:
        out: dict[str, t.Any] = dict(self.stats)
        out["cpu"] = self.publish_cpu()
        out["latencies"] = self.latencies
        out["latencies_dropped"] = self.dropped
        out["connect_times"] = self.connect_times
        out["notices"] = self.notices
        out["errors"] = dict(self.errors)
        out["first_dial"] = self.first_dial
        out["cpu_first_dial"] = self.cpu_first_dial
        if reset:
            self.latencies = array("d")
            self.dropped = 0
            self.notices = {}
            self.stats["events"] = 0
            self.stats["timed"] = 0
            self.stats["bytes"] = 0
            self.publish()  # so a waiter never reads the counts from before the reset
        return out

    # -- connections --

    def dial(self, conn: _Conn) -> None:
        self.dialed += 1
        if self.first_dial is None:
            self.first_dial = self.now
            ru = resource.getrusage(resource.RUSAGE_SELF)
            self.cpu_first_dial = ru.ru_utime + ru.ru_stime
        self.by_index[conn.index] = conn
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(conn, f"socket: {errno.errorcode.get(exc.errno or 0, exc.errno)}", retry=False)
            return
        sock.setblocking(False)
        conn.sock = sock
        conn.phase = _CONNECTING
        conn.dialed_at = self.now
        try:
            if self.sources:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.sources[conn.index % len(self.sources)], 0))
            rc = sock.connect_ex((self.host, self.port))
        except OSError as exc:
            rc = exc.errno or errno.EIO
        if rc not in (0, errno.EINPROGRESS):
            self.fail(conn, f"connect: {errno.errorcode.get(rc, rc)}")
            return
        fd = sock.fileno()
        self.conns[fd] = conn
        self.pending[fd] = conn
        self.ep.register(fd, select.EPOLLOUT)

    def drop(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        fd = sock.fileno()
        self.conns.pop(fd, None)
        self.pending.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        sock.close()
        conn.sock = None
        if conn.sent:
            conn.sent = False
            self.stats["held"] -= 1

    def again(self, conn: _Conn) -> None:
        """Dial ``conn``'s stream again after its ``retry`` (EventSource's reconnection)."""
        self.later_n += 1
        heapq.heappush(
            self.later, (self.now + conn.retry / 1000, self.later_n, _Conn(conn.index, conn.path, 0, conn))
        )
        self.stats["reconnects"] += 1

    def fail(self, conn: _Conn, kind: str, *, retry: bool = True) -> None:
        """A connection that never got its 200."""
        self.drop(conn)
        self.error(kind)
        if self.reconnect and retry:
            self.again(conn)
        elif retry and conn.attempts < self.retries:
            self.queue.append(_Conn(conn.index, conn.path, conn.attempts + 1))
        else:
            self.stats["failed"] += 1

    def closed(self, conn: _Conn, kind: str) -> None:
        """An open stream ended."""
        if conn.phase in (_CONNECTING, _HEAD):
            self.fail(conn, kind)
            return
        self.drop(conn)
        conn.phase = _DONE
        self.error(kind)
        self.stats["open"] -= 1
        self.stats["closed"] += 1
        if self.reconnect:
            self.again(conn)

    def on_writable(self, fd: int, conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None
        if conn.phase == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(conn, f"connect: {errno.errorcode.get(err, err)}")
                return
            conn.phase = _HEAD
            resume = f"Last-Event-ID: {conn.last_id.decode()}\r\n" if conn.last_id else ""
            conn.tosend = f"GET {conn.path} HTTP/1.1\r\n{resume}{self.request_head}".encode("latin-1")
        try:
            n = sock.send(conn.tosend)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(conn, f"send: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
            return
        conn.tosend = conn.tosend[n:]
        if not conn.tosend:
            self.ep.modify(fd, select.EPOLLIN)
            conn.sent = True
            self.stats["held"] += 1
            if not self.early_headers:
                self.pending.pop(fd, None)

    def on_readable(self, conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.closed(conn, f"recv: {errno.errorcode.get(exc.errno or 0, exc.errno)}")
            return
        if not data:
            if conn.phase == _BODY and conn.body == _IDENTITY:
                self.feed_sse(conn, b"", eof=True)
            self.closed(conn, "eof" if conn.phase == _BODY else "eof before headers")
            return
        self.stats["bytes"] += len(data)
        if conn.phase == _HEAD:
            data = self.on_head(conn, data)
            if conn.phase != _BODY or not data:
                return
        self.on_body(conn, data)

    def on_head(self, conn: _Conn, data: bytes) -> bytes:
        buf = conn.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self.fail(conn, "headers too long", retry=False)
            else:
                conn.buf = buf
            return b""
        head = buf[:end].decode("latin-1")
        rest = buf[end + 4 :]
        conn.buf = b""
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
            self.fail(conn, f"status {' '.join(status[1:2]) or '?'}", retry=False)
            return b""
        conn.body = _IDENTITY
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == "transfer-encoding" and value.endswith("chunked"):
                conn.body = _CHUNK_SIZE
            elif name == "content-length" and conn.body == _IDENTITY:
                conn.body = _LENGTH
                conn.remaining = int(value)
        conn.phase = _BODY
        fd = conn.sock.fileno() if conn.sock else -1
        self.pending.pop(fd, None)
        self.stats["open"] += 1
        self.stats["connected"] += 1
        self.connect_times.append(self.now)
        return rest

    def on_body(self, conn: _Conn, data: bytes) -> None:
        body = conn.body
        if body == _IDENTITY:
            self.feed_sse(conn, data)
            return
        if body == _LENGTH:
            part = data[: conn.remaining]
            conn.remaining -= len(part)
            self.feed_sse(conn, part)
            if conn.remaining <= 0 and conn.sock is not None:
                self.feed_sse(conn, b"", eof=True)
                self.closed(conn, "body complete")
            return
        # Chunked: decode as much framing as this buffer holds.
        buf = conn.buf + data if conn.buf else data
        pos = 0
        size = len(buf)
        out = []
        state = body
        while True:
            if state == _CHUNK_DATA:
                take = min(conn.remaining, size - pos)
                if take:
                    out.append(buf[pos : pos + take])
                    pos += take
                    conn.remaining -= take
                if conn.remaining:
                    break
                state = _CHUNK_CRLF
            if state == _CHUNK_CRLF:
                if size - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    conn.buf = b""
                    self.closed(conn, "bad chunk framing")
                    return
                pos += 2
                state = _CHUNK_SIZE
            if state == _CHUNK_SIZE:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if size - pos > 1024:
                        self.closed(conn, "bad chunk size")
                        return
                    break
                try:
                    n = int(buf[pos:nl].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.closed(conn, "bad chunk size")
                    return
                pos = nl + 1
                if n == 0:
                    state = _TRAILER
                else:
                    conn.remaining = n
                    state = _CHUNK_DATA
                    continue
            if state == _TRAILER:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    break
                line = buf[pos:nl].strip()
                pos = nl + 1
                if not line:
                    conn.body = state
                    conn.buf = b""
                    if out:
                        self.feed_sse(conn, b"".join(out))
                    self.feed_sse(conn, b"", eof=True)
                    if conn.sock is not None:
                        self.closed(conn, "body complete")
                    return
        conn.body = state
        conn.buf = buf[pos:] if pos < size else b""
        if out:
            self.feed_sse(conn, out[0] if len(out) == 1 else b"".join(out))

    def feed_sse(self, conn: _Conn, data: bytes, *, eof: bool = False) -> None:
        if eof:
            # An event not ended by a blank line is discarded (as EventSource does).
            conn.line = b""
            conn.data = []
            return
        if not data:
            return
        if not conn.started:
            conn.started = True
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
        if conn.skip_lf:
            conn.skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        pending = conn.line
        text = pending + data if pending else data
        if b"\r" in text:
            if text.endswith(b"\r"):
                conn.skip_lf = True
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if not line:
                conn.last_id = conn.id_buf
                if conn.data:
                    self.dispatch(conn)
                conn.event = b""
                continue
            if line[0] == 58:  # ':' comment
                continue
            colon = line.find(b":")
            if colon < 0:
                field, value = line, b""
            else:
                field = line[:colon]
                value = line[colon + 1 :]
                if value[:1] == b" ":
                    value = value[1:]
            if field == b"data":
                conn.data.append(value)
            elif field == b"event":
                conn.event = value
            elif field == b"id":
                if b"\0" not in value:
                    conn.id_buf = value
            elif field == b"retry" and value.isdigit():
                conn.retry = int(value)
        conn.line = rest

    def dispatch(self, conn: _Conn) -> None:
        data = conn.data
        conn.data = []
        name = conn.event or b"message"
        if self.event_name is not None and name != self.event_name:
            return
        self.stats["events"] += 1
        if self.reconnect and conn.last_id.isdigit():
            seq = int(conn.last_id)
            if seq <= conn.newest:
                self.stats["duplicates"] += 1
            else:
                conn.newest = seq
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        try:
            obj = json.loads(payload)
        except ValueError:
            self.error("event data not JSON")
            return
        sent = None
        if isinstance(obj, dict):
            inner = obj.get("data")
            if isinstance(inner, dict):
                sent = inner.get("sent_at")
            if sent is None:
                sent = obj.get("sent_at")
        if not isinstance(sent, (int, float)) or isinstance(sent, bool):
            return
        now = self.now
        self.stats["timed"] += 1
        if len(self.latencies) < self.max_samples:
            self.latencies.append(now - sent)
        else:
            self.dropped += 1
        rec = self.notices.get(sent)
        if rec is not None:
            rec[0] += 1
            if now > rec[2]:
                rec[2] = now
        elif len(self.notices) < _MAX_NOTICES:
            self.notices[sent] = [1, now, now]

    # -- main loop --

    def handle_command(self) -> bool:
        """Serve the parent's requests; False when the worker must stop."""
        try:
            while self.pipe.poll():
                msg = self.pipe.recv()
                if msg[0] == "collect":
                    self.pipe.send(self.snapshot(bool(msg[1])))
                elif msg[0] == "redial":
                    self.pipe.send(self.redial(msg[1]))
                elif msg[0] == "indexes":
                    live = [c for c in self.by_index.values() if c.sock is not None]
                    self.pipe.send(
                        ([c.index for c in live if c.phase == _BODY], [c.index for c in live if c.sent])
                    )
                elif msg[0] == "stop":
                    return False
        except (EOFError, OSError):
            return False
        return True

    def redial(self, indexes: list[int]) -> int:
        """Close these connections (open or awaiting their answer) and queue them anew."""
        closed = 0
        for i in indexes:
            conn = self.by_index.get(i)
            if conn is None or conn.sock is None:
                continue
            was_open = conn.phase == _BODY
            self.drop(conn)
            conn.phase = _DONE
            if was_open:
                self.stats["open"] -= 1
            self.stats["redialed"] += 1
            closed += 1
            self.queue.append(_Conn(conn.index, conn.path, 0))
        self.publish()
        return closed

    def sweep(self) -> None:
        limit = self.now - self.connect_timeout
        late = [c for c in self.pending.values() if c.dialed_at < limit]
        for conn in late:
            self.fail(conn, "connect timeout" if conn.phase == _CONNECTING else "response timeout")

    def run(self) -> None:
        ppid = os.getppid()
        deadline = time.monotonic() + self.config["max_runtime"]
        pipe_fd = self.pipe.fileno()
        self.ep.register(pipe_fd, select.EPOLLIN)
        self.publish(state=1)
        next_check = 0.0
        running = True
        settled = False
        while running:
            self.now = time.time()
            later = self.later
            while later and later[0][0] <= self.now:
                self.queue.append(heapq.heappop(later)[2])
            while self.queue and len(self.pending) < self.max_inflight:
                self.dial(self.queue.popleft())
            wait = 0.2 if not later else min(0.2, max(0.0, later[0][0] - self.now))
            events = self.ep.poll(wait, 1024)
            self.now = time.time()
            for fd, mask in events:
                if fd == pipe_fd:
                    running = self.handle_command()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if mask & select.EPOLLIN or (
                    mask & (select.EPOLLERR | select.EPOLLHUP) and conn.phase != _CONNECTING
                ):
                    self.on_readable(conn)
                elif mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    self.on_writable(fd, conn)
            self.publish()
            mono = time.monotonic()
            if mono >= next_check:
                next_check = mono + 0.5
                self.publish_cpu()
                self.sweep()
                if not settled and not self.queue and not self.pending and not self.later:
                    settled = True
                    self.publish(state=2)
                if os.getppid() != ppid or mono >= deadline:
                    running = False
        for conn in list(self.conns.values()):
            if conn.sock is not None:
                conn.sock.close()
        self.conns.clear()
        self.pending.clear()
        self.publish_cpu()
        self.publish(state=3)


def _worker_main(
    slot: int, jobs: list[tuple[int, str]], config: dict[str, t.Any], pipe: t.Any, counters: t.Any
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(jobs) + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    worker = _Worker(slot, jobs, config, pipe, counters)
    try:
        worker.run()
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()
