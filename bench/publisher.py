"""An HTTP publisher in its own process: notices at a set rate over keep-alive connections.

``Publisher(host, port, headers, connections=8)`` starts one worker process that keeps up to
``connections`` HTTP/1.1 keep-alive connections to the server. A :class:`Job` asks it for
``count`` notices at ``rate`` notices per second, open loop: request ``i`` is due at
``start + i * batch / rate`` and goes out on the first idle connection at or after that time
(all busy: it waits, and the achieved rate falls below the target). Each request is one notice
(``{"sent_at": <time.time()>, "i": i}``, the loadgen's latency stamp) to a path drawn at random
from ``targets``, or, with ``batch > 1``, one ``POST`` of a JSON list of ``batch`` notices in
sse_notify's batch shape (``[{"user_id": u, "data": {...}}, ...]``) with users drawn from
``batch_users``. Typical use::

    with Publisher("127.0.0.1", port, {"Authorization": "Bearer k"}) as pub:
        result = pub.run(Job(targets=["/users/u1/notices"], rate=500, count=1500))

Why a raw-socket worker and not httpx: at thousands of requests per second a client library's
own CPU time would be what the benchmark measures. Here a request costs one ``send`` and its
response one or two ``recv`` plus a header scan, on one ``epoll`` loop in a process of its own,
whose CPU time (``cpu_s``) is reported with every result so a publisher-bound step shows.

Responses must carry ``Content-Length`` or be chunked. A connection idle for more than a second
is re-opened before use (gunicorn closes idle keep-alive connections after 2 s), so a request
never races the server's close. Bounded: a job stops at ``max_seconds`` (then waits at most
10 s for answers), the worker exits when the parent goes away or on :meth:`Publisher.stop`.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import random
import resource
import select
import socket
import time
import typing as t
from array import array
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Job", "Publisher"]

_OK = frozenset({200, 201, 202})
#: Re-open a keep-alive connection idle for longer than this before using it.
_STALE_AFTER = 1.0


@dataclass
class Job:
    """``count`` notices at ``rate`` per second; see the module docstring."""

    targets: list[str]
    rate: float
    count: int
    batch: int = 1
    batch_users: list[str] = field(default_factory=list)
    max_seconds: float = 120.0
    seed: int = 0


class Publisher:
    """One worker process publishing :class:`Job` s; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        headers: t.Mapping[str, str],
        *,
        connections: int = 8,
        start_method: str = "spawn",
    ) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers)
        self.connections = connections
        self._ctx: t.Any = mp.get_context(start_method)
        self._proc: t.Any = None
        self._pipe: t.Any = None
        self._busy = False

    def start(self) -> Publisher:
        if self._proc is not None:
            raise RuntimeError("already started")
        parent_end, child_end = self._ctx.Pipe()
        config = {
            "host": self.host,
            "port": self.port,
            "headers": self.headers,
            "connections": self.connections,
        }
        self._proc = self._ctx.Process(
            target=_worker_main, args=(config, child_end), name="publisher", daemon=True
        )
        self._proc.start()
        child_end.close()
        self._pipe = parent_end
        return self

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def begin(self, job: Job) -> None:
        """Start ``job`` in the worker and return at once; :meth:`finish` collects the result."""
        if self._busy:
            raise RuntimeError("a job is running")
        self._pipe.send(("job", job))
        self._busy = True

    def cancel(self) -> None:
        """Ask the running job to send nothing more (answers still awaited)."""
        if self._busy:
            with contextlib.suppress(OSError, ValueError):
                self._pipe.send(("cancel",))

    def finish(self, timeout: float) -> dict[str, t.Any]:
        """Wait for the running job's result (see :func:`_run_job` for its keys)."""
        if not self._busy:
            raise RuntimeError("no job is running")
        try:
            if not self._pipe.poll(timeout):
                raise TimeoutError(f"the publisher did not finish within {timeout:.0f} s")
            result: dict[str, t.Any] = self._pipe.recv()
        except EOFError:
            raise RuntimeError("the publisher process died") from None
        self._busy = False
        return result

    def run(self, job: Job, timeout: float | None = None) -> dict[str, t.Any]:
        """Run ``job`` and return its result."""
        self.begin(job)
        return self.finish(timeout if timeout is not None else job.max_seconds + 30)

    def stop(self, timeout: float = 10.0) -> None:
        """End the worker (terminated, then killed, if it lingers)."""
        if self._proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._pipe.send(("stop",))
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(2)
        self._pipe.close()
        self._proc = None
        self._busy = False


# ---------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------


class _Conn:
    __slots__ = ("buf", "idle_since", "sent_at", "size", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.sent_at = 0.0
        self.size = 0  # notices in the request in flight
        self.idle_since = 0.0


def _response_end(buf: bytes) -> tuple[int, int, bool] | None:
    """``(status, bytes used, keep-alive)`` once ``buf`` holds a whole response, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    keep_alive = not parts[0].endswith("1.0")
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and value.endswith("chunked"):
            chunked = True
        elif name == "connection":
            keep_alive = value != "close"
    body = head_end + 4
    if chunked:
        end = buf.find(b"0\r\n\r\n", body)
        while end > body and buf[end - 2 : end] != b"\r\n":
            end = buf.find(b"0\r\n\r\n", end + 1)
        return None if end < 0 else (status, end + 5, keep_alive)
    if len(buf) < body + length:
        return None
    return status, body + length, keep_alive


def _run_job(job: Job, config: dict[str, t.Any], pipe: t.Any, state: dict[str, bool]) -> dict[str, t.Any]:
    """Run one job. Result keys: requests, notices_sent, acked_requests, acked_notices,
    statuses, errors, rtt (seconds per acknowledged request), start (Unix time the schedule
    began), schedule_s, duration_s (start to the last answer), late_max_s (worst send delay
    against the schedule), cpu_s (this process), cancelled. A "stop" message sets
    ``state["stop"]``."""
    host, port = config["host"], config["port"]
    extra = "".join(f"{k}: {v}\r\n" for k, v in config["headers"].items())
    head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
    rng = random.Random(job.seed)
    targets = job.targets
    users = job.batch_users
    batch = max(1, job.batch)
    n_requests = math.ceil(job.count / batch)
    interval = batch / job.rate
    conns = [_Conn() for _ in range(max(1, config["connections"]))]
    idle: deque[_Conn] = deque(conns)
    busy: dict[int, _Conn] = {}
    ep = select.epoll()
    rtt = array("d")
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    acked_requests = acked_notices = notices_sent = 0
    late_max = 0.0
    cancelled = False
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start_unix = time.time()
    start = time.monotonic()
    deadline = start + job.max_seconds
    last_done = start
    next_pipe_check = start

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def close(conn: _Conn) -> None:
        if conn.sock is not None:
            with contextlib.suppress(OSError, ValueError):
                ep.unregister(conn.sock.fileno())
            conn.sock.close()
            conn.sock = None
        conn.buf = b""

    def send(conn: _Conn, i: int, now: float) -> bool:
        nonlocal notices_sent
        if conn.sock is not None and now - conn.idle_since > _STALE_AFTER:
            close(conn)
        if conn.sock is None:
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError as exc:
                error(f"connect: {exc.strerror or exc}")
                return False
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(10)
            conn.sock = sock
            ep.register(sock.fileno(), select.EPOLLIN)
        stamp = time.time()
        if batch == 1:
            path = targets[rng.randrange(len(targets))] if len(targets) > 1 else targets[0]
            body = f'{{"sent_at":{stamp!r},"i":{i}}}'
        else:
            path = targets[0]
            first = i * batch
            items = [
                f'{{"user_id":"{users[rng.randrange(len(users))]}",'
                f'"data":{{"sent_at":{stamp!r},"i":{first + j}}}}}'
                for j in range(batch)
            ]
            body = "[" + ",".join(items) + "]"
        data = body.encode()
        request = f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
        conn.sent_at = time.monotonic()
        try:
            conn.sock.sendall(request)
        except OSError as exc:
            error(f"send: {exc.strerror or exc}")
            close(conn)
            return False
        conn.size = batch
        notices_sent += batch
        busy[conn.sock.fileno()] = conn
        return True

    def on_readable(conn: _Conn) -> None:
        nonlocal acked_requests, acked_notices, last_done
        assert conn.sock is not None
        fd = conn.sock.fileno()
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return
        except OSError as exc:
            data = b""
            error(f"recv: {exc.strerror or exc}")
        if not data:
            if fd in busy:
                del busy[fd]
                error("closed before the answer")
                idle.append(conn)
            close(conn)
            return
        conn.buf += data
        end = _response_end(conn.buf)
        if end is None:
            return
        status, used, keep_alive = end
        now = time.monotonic()
        conn.buf = conn.buf[used:]
        busy.pop(fd, None)
        statuses[status] = statuses.get(status, 0) + 1
        if status in _OK:
            acked_requests += 1
            acked_notices += conn.size
            rtt.append(now - conn.sent_at)
        last_done = now
        conn.idle_since = now
        if not keep_alive:
            close(conn)
        idle.append(conn)

    i = 0
    while True:
        now = time.monotonic()
        if i < n_requests and now >= deadline:
            cancelled = True
            n_requests = i
        while i < n_requests and idle and start + i * interval <= now:
            conn = idle.popleft()
            late_max = max(late_max, now - (start + i * interval))
            if not send(conn, i, now):
                idle.append(conn)
                # The server refuses connections: count this request as failed, move on.
            i += 1
            now = time.monotonic()
        if i >= n_requests and not busy:
            break
        if now > deadline + 10:
            error("no answer in time")
            break
        timeout = min(0.05, max(0.0, start + i * interval - now)) if i < n_requests and idle else 0.05
        for fd, _mask in ep.poll(timeout):
            ready = busy.get(fd) or next(
                (c for c in conns if c.sock is not None and c.sock.fileno() == fd), None
            )
            if ready is not None:
                on_readable(ready)
        if now >= next_pipe_check:
            next_pipe_check = now + 0.02
            while pipe.poll():
                msg = pipe.recv()
                if msg[0] in ("cancel", "stop") and i < n_requests:
                    cancelled = True
                    n_requests = i
                if msg[0] == "stop":
                    state["stop"] = True
            if os.getppid() != config["ppid"]:
                state["stop"] = True
                break
    for conn in conns:
        close(conn)
    ep.close()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": i,
        "notices_sent": notices_sent,
        "acked_requests": acked_requests,
        "acked_notices": acked_notices,
        "statuses": statuses,
        "errors": errors,
        "rtt": rtt,
        "start": start_unix,
        "schedule_s": (max(1, i) - 1) * interval,
        "duration_s": last_done - start,
        "late_max_s": late_max,
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "cancelled": cancelled,
    }


def _worker_main(config: dict[str, t.Any], pipe: t.Any) -> None:
    config = {**config, "ppid": os.getppid()}
    state = {"stop": False}
    try:
        while not state["stop"]:
            if not pipe.poll(1.0):
                if os.getppid() != config["ppid"]:
                    return
                continue
            msg = pipe.recv()
            if msg[0] == "job":
                pipe.send(_run_job(msg[1], config, pipe, state))
            elif msg[0] == "stop":
                return
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        pipe.close()
