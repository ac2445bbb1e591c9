"""Test harness: real gunicorn and redis-server processes, tokens, a skip-or-fail rule.

The SSE client of the tests is ``sse_client.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

ROOT = Path(__file__).resolve().parent.parent

#: The secret and publish key every test server and app uses.
SECRET = "test-secret-key-not-for-production"
PUBLISH_KEY = "test-publish-key"
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}


#: What every test app is configured with, besides its store.
TEST_CONFIG: dict[str, t.Any] = {
    "TESTING": True,
    "SECRET_KEY": SECRET,
    "SSE_NOTIFY_PUBLISH_KEYS": [PUBLISH_KEY],
    "SSE_NOTIFY_HEARTBEAT": 0.2,
}


def standalone_app(store: str = "memory://", **config: t.Any) -> Flask:
    """The standalone server's app (``create_app``) on ``store`` with the test secret and key."""
    from sse_notify import create_app

    return create_app({**TEST_CONFIG, "SSE_NOTIFY_BROKER_URL": store, **config})


def host_app(instance: Path, *, secure: bool = True, root_path: Path | None = None, **config: t.Any) -> Flask:
    """A host Flask app (memory store, instance folder ``instance``), sse_notify not mounted yet.

    ``secure``: with the test secret and publish key (else neither, as on a first run).
    The test mounts sse_notify itself, with ``SSENotify(app, ...)``.
    """
    app = Flask("host", instance_path=str(instance), root_path=str(root_path) if root_path else None)
    base = TEST_CONFIG if secure else {"TESTING": True, "SSE_NOTIFY_HEARTBEAT": 0.2}
    app.config.update({**base, "SSE_NOTIFY_BROKER_URL": "memory://", **config})
    return app


def as_json(text: str | bytes) -> dict[str, t.Any]:
    """Test-client arguments that send ``text`` as the body, declared as JSON."""
    return {"data": text, "content_type": "application/json"}


def token_for(user_id: str, ttl: float = 3600) -> str:
    """A connection token for ``user_id``, as the test servers will accept it."""
    from sse_notify.auth import issue_token

    return issue_token(SECRET, user_id, ttl)


VENV_BIN = Path(sys.executable).parent


def require_binary(name: str, why: str) -> str:
    """Path of a program the test needs; skip without it, or fail when SSE_NOTIFY_REQUIRE_ALL=1 (CI)."""
    found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
    if found:
        return found
    message = f"{name} is not installed: {why}"
    if os.environ.get("SSE_NOTIFY_REQUIRE_ALL") == "1":
        pytest.fail(message + " (SSE_NOTIFY_REQUIRE_ALL=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(message)


def require_root(why: str) -> None:
    """Skip unless running as root; fail instead when SSE_NOTIFY_REQUIRE_ALL=1 (CI runs as root)."""
    if os.geteuid() == 0:
        return
    message = f"not running as root: {why}"
    if os.environ.get("SSE_NOTIFY_REQUIRE_ALL") == "1":
        pytest.fail(message + " (SSE_NOTIFY_REQUIRE_ALL=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str, interval: float = 0.02) -> t.Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stays(predicate: t.Callable[[], t.Any], seconds: float, what: str) -> None:
    """Assert that ``predicate`` holds at every poll for ``seconds`` (for things that must not happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (gunicorn's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


@dataclass
class Server:
    """A real ``gunicorn -k gevent`` serving the app from the repository root."""

    store: str
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    #: The WSGI app, ``module:name``; ``""`` for the ``wsgi_app`` of :attr:`config`.
    app: str = "wsgi:app"
    #: A gunicorn config file (``-c``) instead of the ``gunicorn.conf.py`` of the root.
    config: str | None = None
    #: Where the app answers its health check (``/notify/healthz`` under a prefix).
    health_path: str = "/healthz"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: Where gunicorn's output goes (default: beside a SQLite store, else nowhere).
    log_dir: Path | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        """Start gunicorn and wait until /healthz answers."""
        env = dict(os.environ)
        env.update(
            {
                "SSE_NOTIFY_BROKER_URL": f"sqlite:///{self.store}"
                if self.store.startswith("/")
                else self.store,
                "SSE_NOTIFY_HEARTBEAT": "1",
                "SSE_NOTIFY_RETRY": "200",
                "FLASK_SECRET_KEY": SECRET,
                "SSE_NOTIFY_PUBLISH_KEYS": PUBLISH_KEY,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        gunicorn_path = os.environ.get("SSE_NOTIFY_TEST_GUNICORN_PATH")
        if gunicorn_path:  # another gunicorn than the venv's (make test runs the lowest supported too)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [gunicorn_path, env.get("PYTHONPATH")]))
        if self.log_dir is not None:
            self.log_path = self.log_dir / f"gunicorn.{self.port}.log"
        else:
            self.log_path = Path(self.store + f".{self.port}.log") if self.store.startswith("/") else None
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        cmd = [str(VENV_BIN / "gunicorn"), "--no-control-socket", "-k", "gevent"]
        cmd += ["-c", self.config] if self.config else []
        cmd += ["-w", str(self.workers), "-b", f"127.0.0.1:{self.port}"]
        cmd += [self.app] if self.app else []  # none: the config file's wsgi_app
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if log is not subprocess.DEVNULL:
            log.close()
        wait_for(self._healthy, 20, f"gunicorn on {self.url} to answer {self.health_path}")
        wait_for(lambda: len(self.worker_pids()) >= self.workers, 20, "all workers to boot")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + self.health_path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        """What gunicorn printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """The PIDs of the live workers."""
        return children(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> float:
        """Stop gunicorn with ``sig``; return how long it took to exit."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"gunicorn did not exit within {timeout}s of signal {sig}") from None
        self.proc = None
        return time.monotonic() - started

    def restart(self) -> Server:
        """Stop (SIGTERM) and start again on the same port and store."""
        self.stop()
        return self.start()

    def post(self, path: str, body: t.Any, **kw: t.Any) -> httpx.Response:
        """POST JSON to the server with the publish key."""
        kw.setdefault("headers", AUTH)
        return httpx.post(self.url + path, json=body, timeout=10, **kw)

    def stream_url(self, user_id: str, query: str = "") -> str:
        """The stream URL of ``user_id`` with a valid token (and ``query`` appended)."""
        return f"{self.url}/connection/{user_id}?token={token_for(user_id)}{'&' + query if query else ''}"

    def publish(self, user_id: str, data: dict[str, t.Any]) -> dict[str, t.Any]:
        """Publish to one user; return the stored notice (asserting 201 and ``"status": "delivered"``)."""
        return delivered(self.post(f"/users/{user_id}/notices", data))

    def broadcast(self, data: dict[str, t.Any]) -> dict[str, t.Any]:
        """Publish to everyone; return the stored notice (asserting 201 and ``"status": "delivered"``)."""
        return delivered(self.post("/broadcast", data))

    def health(self) -> dict[str, t.Any]:
        """The /healthz body."""
        return t.cast(dict[str, t.Any], httpx.get(self.url + self.health_path, timeout=5).json())


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by name and sorted labels."""
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delivered(response: httpx.Response | TestResponse) -> t.Any:
    """The notice (or list) a publish answered 201, as streams get it: each receipt said ``delivered``."""
    assert response.status_code == 201, response.text
    body = response.get_json() if isinstance(response, TestResponse) else response.json()
    for receipt in body if isinstance(body, list) else [body]:
        assert receipt.pop("status") == "delivered", receipt
    return body


@dataclass
class RedisServer:
    """A real ``redis-server`` of the test's own, on a free port, with AOF persistence on."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: ``always`` for the tests (nothing acknowledged is lost to a kill); the benchmark uses ``everysec``.
    appendfsync: str = "always"
    #: More options for ``redis-server`` (a cluster node's).
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart, keeping its data) and wait until it answers PING."""
        binary = require_binary("redis-server", "the Redis backend tests start their own redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
        cmd += ["--appendfsync", self.appendfsync, "--dir", str(self.directory), "--logfile", "redis.log"]
        cmd += self.extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it writes its data first; SIGKILL: it does not)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def kill(self) -> None:
        """Kill it (SIGKILL): what it acknowledged must be in its append-only file (fsync always)."""
        self.stop(signal.SIGKILL)

    def clients(self) -> list[dict[str, t.Any]]:
        """CLIENT LIST, without the connection that asks."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            me = client.client_id()
            return [c for c in client.client_list() if int(c["id"]) != me]
        finally:
            client.close()


def cluster_port() -> int:
    """A free port whose cluster bus port (``+10000``) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@dataclass
class RedisCluster:
    """A real Redis Cluster of the tests' own: three primaries and three replicas, on free ports.

    Each node is a :class:`RedisServer` with ``--cluster-enabled yes``; ``redis-cli --cluster
    create`` joins them. A short node timeout makes a killed primary's replica take over in
    about two seconds.
    """

    directory: Path
    primaries: int = 3
    replicas: int = 1
    node_timeout: int = 1000
    #: Each node's ``appendfsync`` (``always`` for the tests, as :class:`RedisServer`).
    appendfsync: str = "always"
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>,...`` (every node, as a user would list seeds)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> RedisCluster:
        """Start the nodes, create the cluster and wait until every slot is served."""
        cli = require_binary("redis-cli", "the Redis Cluster tests create their cluster with redis-cli")
        count = self.primaries * (1 + self.replicas)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        extra += ["--cluster-node-timeout", str(self.node_timeout)]
        extra += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once (the default waits 5 s)
        for index in range(count):
            directory = self.directory / f"node{index}"
            node = RedisServer(directory, port=cluster_port(), extra=extra, appendfsync=self.appendfsync)
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        wait_for(self.healthy, 30, "the cluster to serve every slot")
        return self

    def healthy(self) -> bool:
        """Whether every live node says the cluster is ``ok`` and has :attr:`primaries` primaries."""
        import redis

        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                info = redis.Redis(port=node.port, socket_timeout=2).cluster("info")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != self.primaries:
                return False
            replication = redis.Redis(port=node.port, socket_timeout=2).info("replication")
            if replication["role"] == "master" and int(replication.get("connected_slaves", 0)) > 0:
                online = [v for k, v in replication.items() if k.startswith("slave") and isinstance(v, dict)]
                if any(slave.get("state") != "online" for slave in online):
                    return False
        primaries = [n for n in self.nodes if n.proc is not None and self.role(n) == "master"]
        if len(primaries) != self.primaries:
            return False  # a node back from the dead says "master" until it learns it is a replica now
        live_replicas = sum(1 for n in self.nodes if n.proc is not None) - len(primaries)
        attached = sum(
            int(redis.Redis(port=n.port, socket_timeout=2).info("replication").get("connected_slaves", 0))
            for n in primaries
        )
        return attached >= live_replicas

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node says."""
        import redis

        return str(redis.Redis(port=node.port, socket_timeout=2).role()[0], "ascii")

    def primary_of(self, key: str) -> RedisServer:
        """The live node that serves ``key``'s slot now."""
        import redis

        for node in self.nodes:
            if node.proc is None:
                continue
            client = redis.Redis(port=node.port, socket_timeout=2)
            slot = int(client.cluster("keyslot", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no live node serves {key!r}")

    def node_id(self, node: RedisServer) -> str:
        """The node's cluster id."""
        import redis

        return str(redis.Redis(port=node.port, socket_timeout=2).execute_command("CLUSTER", "MYID"), "ascii")

    def move_slot(self, key: str, to: RedisServer) -> int:
        """Move ``key``'s slot to primary ``to`` as ``redis-cli --cluster reshard`` does (IMPORTING,
        MIGRATING, MIGRATE of each key, SETSLOT NODE on every primary); returns the slot."""
        import redis

        source = self.primary_of(key)
        src = redis.Redis(port=source.port, socket_timeout=10)
        dst = redis.Redis(port=to.port, socket_timeout=10)
        slot = int(src.cluster("keyslot", key))
        src_id, dst_id = self.node_id(source), self.node_id(to)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
            src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
            time.sleep(0.05)  # traffic meets the slot half moved (ASK, TRYAGAIN)
        for node in (to, source, *self.nodes):
            if node.proc is not None and self.role(node) == "master":
                redis.Redis(port=node.port, socket_timeout=5).execute_command(
                    "CLUSTER", "SETSLOT", slot, "NODE", dst_id
                )
        return slot

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


# -- request-level checks (the test client) ------------------------------------


def postgres_binary(name: str) -> str:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``) of the newest installed version."""
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return require_binary(
        found[-1] if found else name,
        "the PostgreSQL store's tests start their own server (apt-get install postgresql)",
    )


@dataclass
class PostgresServer:
    """A real PostgreSQL of the tests' own: ``initdb`` and ``pg_ctl`` in a temporary folder, on a free port.

    ``initdb`` refuses to run as root, so as root both run as the ``postgres`` user that
    Debian's package creates; the folder is made for that user.
    """

    port: int = field(default_factory=free_port)
    directory: Path | None = None

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        """The URL of one database of this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        """Make the cluster (the first time), start it, and wait until it takes connections."""
        import tempfile

        initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="sse-notify-pg-"))
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres", "postgres")
            data = str(self.directory / "data")
            subprocess.run(
                self._as_owner(
                    initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
                ),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=300"
        subprocess.run(
            self._as_owner(
                pg_ctl,
                "-D",
                str(self.directory / "data"),
                "-o",
                options,
                "-l",
                str(self.directory / "log"),
                "-w",
                "start",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, 20, f"PostgreSQL on port {self.port}")
        return self

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self, mode: str = "fast") -> None:
        """Stop it: ``fast`` (clean) or ``immediate`` (as if killed: it recovers at the next start)."""
        if self.directory is not None and (self.directory / "data" / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner(
                    postgres_binary("pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "stop"
                ),
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """Stop it at once, as a crash would (it recovers from its WAL at the next start)."""
        self.stop("immediate")

    def connections(self) -> list[str]:
        """The ``application_name`` of every client connection but the one asking."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchall()
        return [str(name) for (name,) in rows]

    def remove(self) -> None:
        """Stop it and delete its folder."""
        self.stop("immediate")
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def new_database(self, name: str) -> str:
        """Create an empty database ``name``; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)


@dataclass
class PgBouncer:
    """A real PgBouncer in front of a :class:`PostgresServer`, pooling in transaction mode.

    It refuses to run as root, so as root it runs as the ``postgres`` user.
    """

    postgres: PostgresServer
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    directory: Path | None = None

    def url_of(self, database: str) -> str:
        """The URL of one database, through the bouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgBouncer:
        """Write its configuration, start it, and wait until it takes connections."""
        import tempfile

        binary = require_binary(
            "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer",
            "the test of PostgreSQL behind PgBouncer starts its own (apt-get install pgbouncer)",
        )
        self.directory = Path(tempfile.mkdtemp(prefix="sse-notify-pgbouncer-"))
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.postgres.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 10\n"
            f"logfile = {self.directory / 'log'}\n"
        )
        if os.geteuid() == 0:
            for path in (self.directory, *self.directory.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        cmd = [binary, str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._answers, 10, f"PgBouncer on port {self.port}")
        return self

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url_of("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """Stop it and delete its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def embed(instance: Path, **config: t.Any) -> Flask:
    """``SSENotify(app)`` in a bare Flask app whose instance folder is ``instance`` (not the repository's)."""
    from sse_notify import SSENotify

    app = host_app(instance, **config)
    SSENotify(app)
    return app


def head(app: Flask) -> int:
    """The store's newest cursor (0: nothing was ever stored)."""
    from sse_notify.service import get_state

    return get_state(app).broker.head()


def assert_json_error(response: TestResponse | httpx.Response, status: int, error: str) -> dict[str, str]:
    """``response`` is ``status`` with exactly ``{"error": error, "detail": "..."}``; returns the body."""
    # (Never read the body before the status matched: a 200 stream would not end.)
    assert response.status_code == status, (response.status_code, response.headers.get("Content-Type"))
    assert response.headers["Content-Type"] == "application/json"
    body = t.cast(
        dict[str, str],
        json.loads(response.content if isinstance(response, httpx.Response) else response.data),
    )
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def open_stream(client: FlaskClient, path: str, **kw: t.Any) -> tuple[TestResponse, t.Iterator[bytes]]:
    """GET a stream without buffering: the response and an iterator over its chunks."""
    response = client.get(path, buffered=False, **kw)
    return response, iter(response.response)


def on_targeted_redis(
    make_server: t.Callable[..., Server], redis_server: RedisServer, workers: int = 2
) -> tuple[Server, t.Callable[..., list[int]]]:
    """A server on the session's Redis under a prefix of its own (linger 0.3 s), and a count of listeners.

    The count: for each key (a user id, ``#<topic>``), how many of the server's worker feeds
    are subscribed to its channel right now.
    """
    import redis

    prefix = f"tg{os.getpid()}x{time.monotonic_ns()}:"
    server = make_server(workers=workers, store=f"{redis_server.url}?prefix={prefix}&linger=0.3")

    def listeners(*keys: str) -> list[int]:
        channels = [f"{prefix}events@0:{key}" for key in keys]
        with redis.Redis(port=redis_server.port) as admin:
            found = dict(admin.pubsub_numsub(*channels))
        return [int(found[channel.encode()]) for channel in channels]

    return server, listeners
