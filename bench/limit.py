"""Scenario ``limit``: sse_notify against the stack's own limit, in the same run (issue #13).

Two figures, each measured on one ``gunicorn -k gevent -w 1`` worker, alternating sse_notify
and the limit run by run (this machine is shared and noisy), medians over the runs:

- **publish**: one notice per POST (``POST /users/alice/notices``, the default durable SQLite
  store, no stream open, no publish rate limit) against a minimal Flask JSON endpoint
  (:mod:`bench.peers.limit_app`: reads the JSON body, answers 201 with it, stores nothing).
  The load is ApacheBench, ``ab -k -c 32``, after a warm-up of its own. Reported: requests per
  second of each, and sse_notify / limit.
- **connect**: new streams per second. sse_notify's stream (token check, snapshot, handoff)
  against a bare WSGI app that answers a stream with one event and holds it (a greenlet
  each), and against sse_notify without its stream fast path (:mod:`bench.peers.flask_path`:
  what the fast path saves). The load is :class:`~bench.loadgen.LoadGen`; the rate is the
  streams answered 200 over the seconds from the first dial until the last answer.

Load stays on loopback and is bounded in count; every server started here is stopped by PID.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import httpx

from bench.loadgen import LoadGen, format_paths
from sse_notify.auth import issue_token

__all__ = ["ab_binary", "limit"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def ab_binary() -> str | None:
    """ApacheBench (Debian's apache2-utils), if installed."""
    return shutil.which("ab")


class _Server:
    """One ``gunicorn -k gevent -w 1`` (or ``-w workers``) serving ``app`` from the repository root."""

    def __init__(self, app: str, env: dict[str, str], workers: int = 1) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN / "gunicorn"), "--no-control-socket", "-k", "gevent", "-w", str(workers)]
        cmd += ["--worker-connections", "20000", "-b", f"127.0.0.1:{self.port}", app]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{app} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ab(url: str, requests: int, key: str, body: Path) -> float:
    """Requests per second of ``ab -k -c 32`` POSTing ``body`` (fails on any non-2xx answer)."""
    binary = ab_binary()
    assert binary is not None
    cmd = [binary, "-q", "-k", "-c", "32", "-n", str(requests), "-p", str(body), "-T", "application/json"]
    cmd += ["-H", f"Authorization: Bearer {key}", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or "Non-2xx responses" in done.stdout:
        raise RuntimeError(f"ab failed: {done.stdout[-500:]}{done.stderr[-500:]}")
    found = re.search(r"Requests per second:\s+([0-9.]+)", done.stdout)
    assert found, done.stdout
    return float(found.group(1))


def _connect(url_of: t.Callable[[int], str], port: int, streams: int) -> float:
    """New streams per second answered 200 on ``port`` (``streams`` of them)."""
    paths = [url_of(i) for i in range(streams)]
    gen = LoadGen("127.0.0.1", port, paths, processes=2)
    started = time.monotonic()
    gen.start()
    try:
        opened = gen.wait_connected(120)
        took = time.monotonic() - started
        if opened < streams:
            raise RuntimeError(f"only {opened} of {streams} streams opened")
        return opened / took
    finally:
        gen.stop()


class Setup(t.NamedTuple):
    """What a one-worker run needs: its secret and publish key, the servers' environment, stream paths."""

    secret: str
    key: str
    env: dict[str, str]
    #: ``/connection/user-<i>?token=...`` for each stream, as :class:`~bench.loadgen.LoadGen` takes them.
    paths: list[str]


def setup(streams: int) -> Setup:
    """Fresh secrets (no publish rate limit, 5 s heartbeats) and a stream path for each user."""
    secret, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    env = {
        "FLASK_SECRET_KEY": secret,
        "SSE_NOTIFY_PUBLISH_KEYS": key,
        "SSE_NOTIFY_RATE_LIMIT": "",
        "SSE_NOTIFY_HEARTBEAT": "5",
    }
    paths = format_paths(
        "/connection/{user}?token={token}",
        [{"user": f"user-{i}", "token": issue_token(secret, f"user-{i}", 3600)} for i in range(streams)],
    )
    return Setup(secret, key, env, paths)


def limit(runs: int, requests: int, streams: int) -> dict[str, t.Any]:
    """Run both figures ``runs`` times, alternating who goes first; medians and ratios."""
    _, key, env, tokens = setup(streams)
    rates: dict[str, list[float]] = {
        "publish": [],
        "publish_limit": [],
        "connect": [],
        "connect_limit": [],
        "connect_flask": [],
    }
    stream_apps = {
        "sse_notify": "wsgi:app",
        "limit": "bench.peers.limit_app:streams",
        "flask": "bench.peers.flask_path:app",
    }
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "notice.json"
        body.write_text('{"title":"Build finished","text":"main is green","n":1}')
        for run in range(runs):
            order = ["limit", "sse_notify"] if run % 2 == 0 else ["sse_notify", "limit"]
            for who in order:
                store = f"sqlite:///{tmp}/run{run}.sqlite3"
                server = _Server(
                    "wsgi:app" if who == "sse_notify" else "bench.peers.limit_app:app",
                    {**env, "SSE_NOTIFY_BROKER_URL": store},
                )
                try:
                    url = f"{server.url}/users/alice/notices"
                    _ab(url, max(500, requests // 10), key, body)  # warm-up
                    rate = _ab(url, requests, key, body)
                finally:
                    server.stop()
                rates["publish" if who == "sse_notify" else "publish_limit"].append(rate)
            for who in [*order, "flask"] if run % 2 == 0 else ["flask", *order]:
                store = f"sqlite:///{tmp}/streams-{who}-{run}.sqlite3"
                server = _Server(stream_apps[who], {**env, "SSE_NOTIFY_BROKER_URL": store})
                try:
                    rate = _connect(lambda i: tokens[i], server.port, streams)
                finally:
                    server.stop()
                rates[
                    {"sse_notify": "connect", "limit": "connect_limit", "flask": "connect_flask"}[who]
                ].append(rate)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "scenario": "limit",
        "runs": runs,
        "requests": requests,
        "streams": streams,
        "publish_per_s": round(medians["publish"], 1),
        "limit_publish_per_s": round(medians["publish_limit"], 1),
        "publish_ratio": round(medians["publish"] / medians["publish_limit"], 3),
        "connect_per_s": round(medians["connect"], 1),
        "limit_connect_per_s": round(medians["connect_limit"], 1),
        "connect_ratio": round(medians["connect"] / medians["connect_limit"], 3),
        "connect_without_fast_path_per_s": round(medians["connect_flask"], 1),
        "fast_path_gain": round(medians["connect"] / medians["connect_flask"], 3),
        "all": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def render_limit(report: dict[str, t.Any]) -> str:
    """The two figures as a table."""
    return "\n".join(
        [
            f"limit: median of {report['runs']} alternating run(s); one gunicorn -k gevent worker each",
            "",
            "| figure | sse_notify | stack limit | sse_notify / limit |",
            "|---|---:|---:|---:|",
            f"| one notice per POST, ab -k -c 32, {report['requests']:,} requests [/s] "
            f"| {report['publish_per_s']:,.0f} | {report['limit_publish_per_s']:,.0f} "
            f"| {report['publish_ratio']:.2f}x |",
            f"| new streams, {report['streams']:,} [/s] | {report['connect_per_s']:,.0f} "
            f"| {report['limit_connect_per_s']:,.0f} | {report['connect_ratio']:.2f}x |",
            "| new streams without the stream fast path [/s] "
            f"| {report['connect_without_fast_path_per_s']:,.0f} | "
            f"| fast path: {report['fast_path_gain']:.2f}x |",
            f"runs: {report['all']}",
        ]
    )
