"""Reference servers for benchmarks that compare sse_notify with its peers in the same run.

Three servers with one small interface (:class:`Peer`):

- :class:`SSENotify`: this project, ``gunicorn -k gevent -w 1 wsgi:app`` on a fresh SQLite store.
- :class:`Nchan`: nginx + the Nchan module (Debian ``nginx`` and ``libnginx-mod-nchan``), the
  C-speed reference, configured from ``nchan.conf.template``.
- :class:`FlaskSSE`: the flask-sse package (``flask_sse_app.py``) under gunicorn + gevent, on its
  own ``redis-server``.

Each starts on free loopback ports in its own temporary directory, and :meth:`Peer.stop` stops
every process it started by PID (gunicorn with SIGINT, its quick shutdown, as nothing here needs
draining; the others with SIGTERM; SIGKILL after a timeout) and removes the directory.
:meth:`Peer.roles` names the processes (``master``, ``worker``, ``redis``) for /proc figures.
Use them as context managers::

    with Nchan() as peer:
        url = peer.stream_url("alice")      # open with STREAM_HEADERS
        peer.wait_streams(1)
        peer.publish("alice", {"n": 1})     # returns once the server acknowledged
        peer.broadcast({"n": 2})
        peer.pids()                         # for RSS/CPU from /proc

What a broadcast reaches differs: on sse_notify and Nchan every user's stream also receives
broadcasts (``multiplexed = True``; Nchan subscribes each stream to its user's channel and to
``all``). flask-sse streams exactly one Redis channel per connection, so a client needs a
second connection (``/stream?channel=all``) for broadcasts; :meth:`Peer.broadcast_stream_url`
is where the fan-out scenario subscribes on each server.

``python -m bench.peers`` is a self-check that starts each server, streams, publishes and stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path
from urllib.parse import quote

if t.TYPE_CHECKING:
    import httpx

# httpx, redis and sse_notify are imported where they are used: gunicorn imports this package
# (bench.peers.flask_sse_app) in the flask-sse worker, whose RSS the benchmark measures.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent

#: Headers every stream request must send: Nchan only serves EventSource to
#: ``Accept: text/event-stream`` (httpx-sse's ``connect_sse`` sends it already).
STREAM_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}

#: Where Debian's libnginx-mod-nchan installs the module.
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NCHAN_MODULE_CONF = Path("/usr/share/nginx/modules-available/mod-nchan.conf")

_CHANNEL = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def _check_channel(name: str) -> str:
    if not _CHANNEL.fullmatch(name) or name == "all":
        raise ValueError(f"not a usable user/channel id: {name!r} ([A-Za-z0-9_.-], not 'all')")
    return name


class Peer:
    """A server started by PID on free loopback ports; see the module docstring."""

    #: Short name for reports.
    name = "peer"
    #: Do user streams (:meth:`stream_url`) also receive broadcasts?
    multiplexed = True
    #: Seconds to wait after SIGTERM before SIGKILL.
    stop_timeout = 15.0
    #: Does a stream get its response headers at once (True), or only with its first event?
    early_headers = True
    #: Does the server take many notices in one request (:meth:`batch_request`)?
    batch = False

    def __init__(self) -> None:
        self.port = 0
        self.tmp: Path | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stop_signals: dict[int, int] = {}
        self._client: httpx.Client | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> t.Self:
        """Start the server(s) and wait until they answer; on failure stop what started."""
        import httpx

        if self._procs:
            raise RuntimeError(f"{self.name} is already running")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self._client = httpx.Client(timeout=10)
        try:
            self._start()
        except BaseException:
            log = self.log()
            self.stop()
            if log:
                print(f"--- {self.name} logs ---\n{log[-4000:]}", file=sys.stderr)
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every process started here (newest first) by PID, then remove the temp dir."""
        if self._client is not None:
            # First, so no keep-alive connection of ours holds up a server's shutdown.
            self._client.close()
            self._client = None
        while self._procs:
            _, proc = self._procs.pop()
            _stop(proc, self.stop_timeout, self._stop_signals.pop(proc.pid, signal.SIGTERM))
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> t.Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """PIDs of every live server process (masters, workers, Redis) for /proc measurements."""
        found: list[int] = []
        for _, proc in self._procs:
            if proc.poll() is None:
                found.append(proc.pid)
                found.extend(descendants(proc.pid))
        return found

    def roles(self) -> dict[str, list[int]]:
        """Live server PIDs by role: ``master`` and ``worker`` (gunicorn, nginx), ``redis``."""
        out: dict[str, list[int]] = {}
        for name, proc in self._procs:
            if proc.poll() is not None:
                continue
            if name == "redis":
                out.setdefault("redis", []).append(proc.pid)
            else:
                out.setdefault("master", []).append(proc.pid)
                out.setdefault("worker", []).extend(descendants(proc.pid))
        return out

    def log(self) -> str:
        """Everything the processes logged so far."""
        if self.tmp is None:
            return ""
        parts = []
        for path in sorted(self.tmp.glob("*.log")):
            parts.append(f"== {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def _spawn(
        self, name: str, cmd: list[str], stop_signal: int = signal.SIGTERM, **kw: t.Any
    ) -> subprocess.Popen[bytes]:
        assert self.tmp is not None
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kw)
        self._procs.append((name, proc))
        self._stop_signals[proc.pid] = stop_signal
        return proc

    def _wait(self, ready: t.Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {name} exited with {proc.returncode}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: timed out waiting for {what}")

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._client

    # -- the benchmark interface -------------------------------------------------------------

    def stream_url(self, user: str) -> str:
        """The URL of ``user``'s stream (send :data:`STREAM_HEADERS`)."""
        raise NotImplementedError

    def broadcast_stream_url(self, user: str = "fanout") -> str:
        """Where a fan-out client subscribes (``user`` is used where the server has users)."""
        return self.stream_url(user)

    def publish_request(self, user: str, data: dict[str, t.Any]) -> httpx.Request:
        """The request that publishes ``data`` to ``user`` (send with any httpx client)."""
        raise NotImplementedError

    def broadcast_request(self, data: dict[str, t.Any]) -> httpx.Request:
        """The request that publishes ``data`` to everyone."""
        raise NotImplementedError

    def batch_request(self, items: list[tuple[str, dict[str, t.Any]]]) -> httpx.Request:
        """The request that publishes each ``(user, data)`` of ``items`` (only when :attr:`batch`)."""
        raise NotImplementedError(f"{self.name} has no batch publish")

    #: Status codes that mean "accepted".
    ok_status: t.ClassVar[frozenset[int]] = frozenset({200, 201, 202})

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self.client.send(request)
        if response.status_code not in self.ok_status:
            raise RuntimeError(f"{self.name}: {request.url} answered {response.status_code}: {response.text}")
        return response

    def publish(self, user: str, data: dict[str, t.Any]) -> httpx.Response:
        """Publish to one user; returns once the server acknowledged it."""
        return self._send(self.publish_request(user, data))

    def broadcast(self, data: dict[str, t.Any]) -> httpx.Response:
        """Publish to everyone; returns once the server acknowledged it."""
        return self._send(self.broadcast_request(data))

    def stream_count(self) -> int:
        """How many streams the server has open (as it counts them)."""
        raise NotImplementedError

    def subscribed(self) -> set[str] | None:
        """The channels with a subscriber, where the server can list them (flask-sse); else None."""
        return None

    def stream_capacity(self) -> int | None:
        """The most streams this server holds while still working (None: no known limit below
        the benchmark's sizes); see :meth:`capacity_reason`."""
        return None

    def capacity_reason(self) -> str:
        """Why :meth:`stream_capacity` is what it is."""
        return "no known limit"

    def subscriptions_made(self) -> int | None:
        """Subscriptions the server has made since it started (only grows), where it can tell
        (flask-sse: Redis's SUBSCRIBE count); else None."""
        return None

    def wait_streams(self, n: int, timeout: float = 30) -> None:
        """Wait until the server counts at least ``n`` open streams (subscribed, so nothing is missed)."""
        self._wait(lambda: self.stream_count() >= n, f"{n} open streams", timeout)


def _stop(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``proc``, SIGKILL it after ``timeout``; then SIGKILL any descendant it left behind."""
    if proc.poll() is not None:
        return
    below = [(pid, _start_time(pid)) for pid in descendants(proc.pid)]
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + timeout
    for pid, started in below:
        # Only the same process (same start time), not a reused PID.
        while started is not None and _start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.05)
        if started is not None and _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class SSENotify(Peer):
    """sse_notify: ``gunicorn --no-control-socket -k gevent -w 1 wsgi:app`` from the repository root.

    Uses the repository's gunicorn.conf.py, a fresh SQLite store in the temp dir, a random
    secret and publish key, and connection tokens. ``env`` overrides settings (for example
    ``{"SSE_NOTIFY_RATE_LIMIT": "100000/second"}``). :meth:`stream_count` reads /healthz, which
    counts the streams of the worker that answers: exact only with ``workers=1``.
    """

    name = "sse_notify"
    multiplexed = True
    batch = True

    def __init__(self, workers: int = 1, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.workers = workers
        self.env = dict(env or {})
        self.secret = secrets.token_urlsafe(32)
        self.publish_key = secrets.token_urlsafe(32)

    def _start(self) -> None:
        assert self.tmp is not None
        env = {
            **os.environ,
            "FLASK_SECRET_KEY": self.secret,
            "SSE_NOTIFY_PUBLISH_KEYS": self.publish_key,
            "SSE_NOTIFY_BROKER_URL": f"sqlite:///{self.tmp}/n.sqlite3",
            **self.env,
        }
        cmd = [str(BIN / "gunicorn"), "--no-control-socket", "-k", "gevent", "-w", str(self.workers)]
        cmd += ["-b", f"127.0.0.1:{self.port}", "wsgi:app"]
        self._spawn("gunicorn", cmd, signal.SIGINT, cwd=ROOT, env=env)
        self._wait(lambda: self.client.get(self.base_url + "/healthz").status_code == 200, "/healthz")
        self._wait(lambda: len(self.pids()) >= 1 + self.workers, "the workers")

    def stream_url(self, user: str) -> str:
        from sse_notify.auth import issue_token

        token = issue_token(self.secret, _check_channel(user), 24 * 3600)
        return f"{self.base_url}/connection/{user}?token={quote(token)}"

    def _post(self, path: str, data: dict[str, t.Any]) -> httpx.Request:
        headers = {"Authorization": f"Bearer {self.publish_key}"}
        return self.client.build_request("POST", self.base_url + path, json=data, headers=headers)

    def publish_request(self, user: str, data: dict[str, t.Any]) -> httpx.Request:
        return self._post(f"/users/{_check_channel(user)}/notices", data)

    def broadcast_request(self, data: dict[str, t.Any]) -> httpx.Request:
        return self._post("/broadcast", data)

    def batch_request(self, items: list[tuple[str, dict[str, t.Any]]]) -> httpx.Request:
        """``POST /notices`` with ``[{"user_id": ..., "data": ...}, ...]``."""
        headers = {"Authorization": f"Bearer {self.publish_key}"}
        body = [{"user_id": _check_channel(user), "data": data} for user, data in items]
        return self.client.build_request("POST", self.base_url + "/notices", json=body, headers=headers)

    def stream_count(self) -> int:
        return int(self.client.get(self.base_url + "/healthz").json()["streams"])


class Nchan(Peer):
    """nginx + Nchan in the foreground (``daemon off``), ``workers`` workers (one by default), from
    ``nchan.conf.template``.

    ``/sub/<user>`` subscribes to the channels ``<user>`` and ``all`` (EventSource only: send
    :data:`STREAM_HEADERS`); ``/pub/<channel>`` publishes; ``/status`` is nchan_stub_status.
    ``ping_interval`` (seconds, 0 = off, Nchan's default) sends an EventSource ``ping`` event on
    idle streams, Nchan's heartbeat.
    Publishing answers 201 (someone subscribed) or 202 (stored for later), after the message
    is in shared memory.
    """

    name = "nchan"
    multiplexed = True

    def __init__(
        self,
        nginx: str | None = None,
        module: str | Path | None = None,
        ping_interval: int = 0,
        workers: int = 1,
    ) -> None:
        super().__init__()
        self.ping_interval = ping_interval
        self.workers = workers
        self.nginx = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        self.module = Path(module) if module else _find_nchan_module()

    def _start(self) -> None:
        assert self.tmp is not None
        template = (HERE / "nchan.conf.template").read_text()
        conf = template.replace("@PREFIX@", str(self.tmp))
        conf = conf.replace("@PORT@", str(self.port)).replace("@MODULE@", str(self.module))
        conf = conf.replace("@PING@", str(int(self.ping_interval))).replace("@WORKERS@", str(self.workers))
        conf = conf.replace("@REUSEPORT@", " reuseport" if self.workers > 1 else "")
        (self.tmp / "nginx.conf").write_text(conf)
        cmd = [self.nginx, "-p", f"{self.tmp}/", "-c", str(self.tmp / "nginx.conf")]
        cmd += ["-e", str(self.tmp / "error.log")]
        self._spawn("nginx", cmd)
        self._wait(lambda: self.client.get(self.base_url + "/status").status_code == 200, "/status")
        self._wait(lambda: len(self.pids()) >= 1 + self.workers, "the workers")

    def stream_url(self, user: str) -> str:
        return f"{self.base_url}/sub/{_check_channel(user)}"

    def publish_request(self, user: str, data: dict[str, t.Any]) -> httpx.Request:
        return self.client.build_request("POST", f"{self.base_url}/pub/{_check_channel(user)}", json=data)

    def broadcast_request(self, data: dict[str, t.Any]) -> httpx.Request:
        return self.client.build_request("POST", f"{self.base_url}/pub/all", json=data)

    def stream_count(self) -> int:
        status = self.client.get(self.base_url + "/status").text
        match = re.search(r"^subscribers: (\d+)", status, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no subscriber count in nchan_stub_status: {status!r}")
        return int(match.group(1))


def _find_nchan_module() -> Path:
    if NCHAN_MODULE.exists():
        return NCHAN_MODULE
    if NCHAN_MODULE_CONF.exists():
        match = re.search(r"load_module\s+(\S+);", NCHAN_MODULE_CONF.read_text())
        if match:
            path = Path(match.group(1))
            return path if path.is_absolute() else Path("/usr/share/nginx") / path
    raise FileNotFoundError(
        "ngx_nchan_module.so not found: apt-get install -y --no-install-recommends nginx libnginx-mod-nchan"
    )


class FlaskSSE(Peer):
    """flask-sse under ``gunicorn -k gevent --worker-connections 20000 -w 1``, on its own redis-server.

    ``/stream?channel=<user>`` streams one Redis channel; broadcasts go to channel ``all``, which
    only ``/stream?channel=all`` receives (``multiplexed = False``). Each open stream holds one
    Redis pub/sub connection; :meth:`stream_count` counts those. Response headers are only sent
    with the first event, so wait with :meth:`wait_streams`, not for headers. Each stream costs
    the worker two file descriptors (client socket and Redis socket), so under an open-files
    limit of L one worker holds fewer than L/2 streams.
    """

    name = "flask-sse"
    multiplexed = False
    early_headers = False

    #: Descriptors the worker keeps for everything but streams: the Redis connections publishing
    #: takes from its pool, the listening socket, logs. Without them, publishing fails (500).
    fd_reserve = 128

    def __init__(self, worker_connections: int = 20000) -> None:
        super().__init__()
        self.worker_connections = worker_connections
        self.redis_port = 0
        self.redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"

    @staticmethod
    def _fd_limit() -> int:
        # flask_sse_gunicorn.conf.py raises the worker's soft limit to the hard limit it inherits.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return 65536 if hard == resource.RLIM_INFINITY else int(hard)

    def stream_capacity(self) -> int | None:
        """Two descriptors per stream (client socket, Redis connection) under the open-files limit,
        keeping :attr:`fd_reserve` for publishing."""
        return (self._fd_limit() - self.fd_reserve) // 2

    def capacity_reason(self) -> str:
        return (
            f"2 file descriptors per stream under an open-files limit of {self._fd_limit():,}, "
            f"{self.fd_reserve} kept so that publishing still gets Redis connections"
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _redis(self) -> t.Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def _start(self) -> None:
        assert self.tmp is not None
        self.redis_port = free_port()
        redis_cmd = [self.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        redis_cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        # One Redis connection per open stream; stay under the open-files limit redis-server inherits.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxclients = self.worker_connections + 1000
        if hard != resource.RLIM_INFINITY:
            maxclients = min(maxclients, hard - 32)
        redis_cmd += ["--maxclients", str(maxclients)]
        self._spawn("redis", redis_cmd)
        with self._redis() as r:
            self._wait(r.ping, "redis-server")
        cmd = [str(BIN / "gunicorn"), "-c", str(HERE / "flask_sse_gunicorn.conf.py"), "--no-control-socket"]
        cmd += ["-k", "gevent", "--worker-connections", str(self.worker_connections), "-w", "1"]
        cmd += ["-b", f"127.0.0.1:{self.port}", "bench.peers.flask_sse_app:app"]
        env = {**os.environ, "SSE_REDIS_URL": self.redis_url}
        self._spawn("gunicorn", cmd, signal.SIGINT, cwd=ROOT, env=env)
        self._wait(lambda: self.client.get(self.base_url + "/healthz").status_code == 200, "/healthz")

    def stream_url(self, user: str) -> str:
        return f"{self.base_url}/stream?channel={_check_channel(user)}"

    def broadcast_stream_url(self, user: str = "fanout") -> str:
        return f"{self.base_url}/stream?channel=all"

    def publish_request(self, user: str, data: dict[str, t.Any]) -> httpx.Request:
        return self.client.build_request("POST", f"{self.base_url}/publish/{_check_channel(user)}", json=data)

    def broadcast_request(self, data: dict[str, t.Any]) -> httpx.Request:
        return self.client.build_request("POST", f"{self.base_url}/publish/all", json=data)

    def stream_count(self) -> int:
        """Subscriptions over every channel (PUBSUB CHANNELS + NUMSUB; cheaper than CLIENT LIST)."""
        with self._redis() as r:
            channels = r.pubsub_channels()
            total = 0
            for start in range(0, len(channels), 5000):
                total += sum(int(n) for _, n in r.pubsub_numsub(*channels[start : start + 5000]))
            return total

    def subscriptions_made(self) -> int | None:
        """SUBSCRIBE commands Redis has run: one per stream flask-sse opened."""
        with self._redis() as r:
            stats = r.info("commandstats")
            return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))

    def subscribed(self) -> set[str] | None:
        with self._redis() as r:
            return {c.decode() if isinstance(c, bytes) else str(c) for c in r.pubsub_channels()}


PEERS: tuple[type[Peer], ...] = (SSENotify, Nchan, FlaskSSE)

__all__ = [
    "NCHAN_MODULE",
    "PEERS",
    "STREAM_HEADERS",
    "FlaskSSE",
    "Nchan",
    "Peer",
    "SSENotify",
    "descendants",
    "free_port",
]
