"""Benchmarks: ``python -m bench [scenario ...] [--smoke]``.

``python -m bench scenarios --streams N --peers sse_notify,nchan,flask-sse --runs K --json out.json``
runs the scenarios of issue #5 (idle, connect, fanout, unicast, churn; :mod:`bench.scenarios`)
against sse_notify and its peers (:mod:`bench.peers`, settings in :mod:`bench.compare`) with the
same N and load, and prints one table (:mod:`bench.report`): each figure per peer and the ratio
sse_notify / peer. ``python -m bench --smoke`` is a tiny run of every scenario against every peer
plus crossworker and proxy, for CI; it exits 1 on any error, lost notice or stream not opened.

Scenario ``crossworker``: ``gunicorn -k gevent -w 4`` on the default SQLite
store; streams of one user spread over every worker; notices are published
one per POST at a fixed rate through the same server (so through random
workers). Each notice carries the publisher's wall-clock time; each client
records when it arrived. Reported: publish-to-receive latency (every
delivery) p50/p99/max, lost and duplicated deliveries, and the client's own
CPU time (a client-bound number is called that).

Scenario ``proxy`` (:mod:`bench.proxy`): one ``gunicorn -k gevent -w 1`` with nginx in front,
configured by the sample in docs/PRODUCTION.md. Each notice (one per POST, ``--notices`` at
``--rate``) reaches a stream opened directly and one opened through nginx; reported:
publish-to-receive p50/p99/max per path, the difference nginx - direct per notice, and lost
notices. Without nginx it is skipped (a failure when ``SSE_NOTIFY_REQUIRE_ALL=1``).

Scenario ``limit`` (:mod:`bench.limit`): one notice per POST (``ab -k -c 32``) and new streams
per second on one worker, each against the stack's own limit (a minimal Flask JSON endpoint, a
bare streaming WSGI app) in the same run, alternating, medians.

Scenario ``pending`` (:mod:`bench.pending`): one notice per POST and new streams per second with
no scheduled notice and with ``--pending`` (100,000) waiting, alternating, medians; and how late
scheduled notices arrive with them waiting.

Scenario ``fallback`` (:mod:`bench.fallback`): one notice per POST with no fallback channel, with
the webhook channel on (60 s windows), and with 10 ms windows (a window entry nearly every
round), rotating, medians.

Scenario ``stores`` (:mod:`bench.stores`): one notice per POST and 100 per POST on SQLite,
PostgreSQL and Redis, each on its own server started here, rotating, medians.

Scenario ``scaling`` (:mod:`bench.scaling`): Redis output bytes, Redis commands and worker CPU
per notice on the Redis store with 1, 2, 4 and 8 workers holding the same streams, the same
notices published at the same rate (``--streams`` 400, 4 x ``--notices``, 4 x ``--rate``).

Scenario ``instructions`` (:mod:`bench.instructions`): instructions per new stream in the
serving worker, counted by callgrind (the same whatever the machine is doing), for sse_notify
and the bare streaming app. Without valgrind it is skipped (a failure when
``SSE_NOTIFY_REQUIRE_ALL=1``).

Scenario ``c100k`` (:mod:`bench.c100k`): 100,000 streams (``--streams``) on ``--workers`` (6)
workers beside Nchan with as many nginx workers, each run on fresh servers: streams opened and
refused, memory per stream (RSS and PSS summed over the server's processes), broadcast to the
last client, publish round trip, and a reconnect storm after every worker is killed. On demand
only: ``python -m bench c100k --runs 3``; the smoke run does it at 300 streams.

Load is bounded (``--streams``, ``--notices``, ``--rate``), loopback only, and
every server started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

from bench import compare
from bench.c100k import c100k, render_c100k
from bench.compare import PEER_NAMES
from bench.fallback import fallback, render_fallback
from bench.instructions import instructions, render_instructions, valgrind_binary
from bench.limit import ab_binary, limit, render_limit
from bench.pending import pending, render_pending
from bench.proxy import nginx_binary, proxy
from bench.report import render, render_proxy
from bench.scaling import render_scaling, scaling
from bench.scenarios import SCENARIOS, Load
from bench.stores import render_stores, stores
from sse_notify.auth import issue_token

ROOT = Path(__file__).resolve().parent.parent
SECRET = secrets.token_urlsafe(32)
PUBLISH_KEY = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {PUBLISH_KEY}"}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """A gunicorn serving wsgi:app from the repository root on a fresh store."""

    def __init__(self, workers: int, store: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **os.environ,
            "SSE_NOTIFY_BROKER_URL": f"sqlite:///{store}",
            "FLASK_SECRET_KEY": SECRET,
            "SSE_NOTIFY_PUBLISH_KEYS": PUBLISH_KEY,
            **(env or {}),
        }
        cmd = [str(BIN / "gunicorn"), "--no-control-socket", "-k", "gevent", "-w", str(workers)]
        cmd += ["-b", f"127.0.0.1:{self.port}", "wsgi:app"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=environment, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _reader(
    url: str, opened: asyncio.Event, arrivals: list[tuple[int, float]], done: asyncio.Event
) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:  # noqa: SIM117
        async with aconnect_sse(client, "GET", url) as source:
            opened.set()
            async for sse in source.aiter_sse():
                if sse.event == "notice":
                    notice = json.loads(sse.data)
                    arrivals.append((notice["id"], time.time() - notice["data"]["sent_at"]))
                if done.is_set():
                    return


async def crossworker(streams: int, notices: int, rate: float) -> dict[str, t.Any]:
    """Publish-to-receive latency across 4 workers sharing the SQLite store."""
    with tempfile.TemporaryDirectory() as tmp:
        # Every stream is the same user here: lift the per-user stream limit (20 per worker).
        env = {"SSE_NOTIFY_HEARTBEAT": "5", "SSE_NOTIFY_MAX_STREAMS_PER_USER": str(streams + 1)}
        server = Gunicorn(4, f"{tmp}/n.sqlite3", env)
        try:
            cpu0 = time.process_time()
            done = asyncio.Event()
            arrivals: list[list[tuple[int, float]]] = [[] for _ in range(streams)]
            openers = [asyncio.Event() for _ in range(streams)]
            url = f"{server.url}/connection/bench?token={issue_token(SECRET, 'bench', 3600)}"
            tasks = [asyncio.create_task(_reader(url, openers[i], arrivals[i], done)) for i in range(streams)]
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in openers)), 30)
            sent: list[int] = []
            async with httpx.AsyncClient(timeout=10, headers=AUTH) as client:
                started = time.monotonic()
                for i in range(notices):
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                    r = await client.post(
                        f"{server.url}/users/bench/notices", json={"sent_at": time.time(), "i": i}
                    )
                    r.raise_for_status()
                    sent.append(r.json()["id"])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(len(a) < notices for a in arrivals):
                await asyncio.sleep(0.05)
            done.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cpu = time.process_time() - cpu0
        finally:
            server.stop()
    latencies = [lat * 1000 for a in arrivals for _, lat in a]
    received = [[i for i, _ in a] for a in arrivals]
    lost = sum(len(set(sent) - set(r)) for r in received)
    duplicated = sum(len(r) - len(set(r)) for r in received)
    out_of_order = sum(r != sorted(r) for r in received)
    return {
        "scenario": "crossworker",
        "workers": 4,
        "streams": streams,
        "notices": notices,
        "rate_per_s": rate,
        "deliveries": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order_streams": out_of_order,
        "client_cpu_s": round(cpu, 2),
    }


PEER_SCENARIOS = tuple(SCENARIOS)
#: Every scenario, in the order they run.
EVERY = (
    "crossworker",
    "proxy",
    "limit",
    "pending",
    "fallback",
    "stores",
    "scaling",
    "instructions",
    "c100k",
    *PEER_SCENARIOS,
)


def _clean(value: t.Any) -> t.Any:
    """``value`` as strict JSON can hold it (NaN and infinities become None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _crossworker(args: argparse.Namespace, streams: int) -> bool:
    """Run the crossworker scenario ``args.runs`` times, print its JSON line; True when it failed."""
    runs = [asyncio.run(crossworker(streams, args.notices, args.rate)) for _ in range(args.runs)]
    report = dict(runs[0])
    for key in ("p50_ms", "p99_ms", "max_ms", "client_cpu_s"):
        values = [r[key] for r in runs if r[key] is not None]
        report[key] = statistics.median(values) if values else None
    report["lost"] = sum(r["lost"] for r in runs)
    report["duplicated"] = sum(r["duplicated"] for r in runs)
    report["runs"] = args.runs
    print(json.dumps(report), flush=True)
    if report["lost"] or report["duplicated"] or report["deliveries"] == 0:
        print("crossworker: notices were lost or duplicated", file=sys.stderr)
        return True
    return False


def _unavailable(scenario: str, reason: str) -> bool:
    """Say a scenario cannot run here: a skip, or a failure (True) when ``SSE_NOTIFY_REQUIRE_ALL=1``."""
    if os.environ.get("SSE_NOTIFY_REQUIRE_ALL") == "1":
        print(f"FAIL {scenario}: {reason} (SSE_NOTIFY_REQUIRE_ALL=1)", file=sys.stderr)
        return True
    print(f"SKIP {scenario}: {reason}", file=sys.stderr)
    return False


def _proxy(notices: int, rate: float, runs: int) -> bool:
    """Run the proxy scenario ``runs`` times, print its JSON line and table; True when it failed."""
    if nginx_binary() is None:
        return _unavailable("proxy", "nginx is not installed (apt-get install nginx)")
    results = [proxy(notices, rate, compare.SSE_NOTIFY_ENV) for _ in range(runs)]

    def median(values: list[t.Any]) -> t.Any:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    report = dict(results[0])
    for path in ("direct", "nginx"):
        report[path] = {
            **{key: median([r[path][key] for r in results]) for key in ("p50_ms", "p99_ms", "max_ms")},
            "lost": sum(r[path]["lost"] for r in results),
            "duplicated": sum(r[path]["duplicated"] for r in results),
        }
    for key in ("difference_p50_ms", "difference_p99_ms", "ratio_p50"):
        report[key] = median([r[key] for r in results])
    report["errors"] = [e for r in results for e in r["errors"]]
    report["nginx_errors"] = [e for r in results for e in r["nginx_errors"]]
    report["runs"] = runs
    print(json.dumps(report), flush=True)
    print(render_proxy(report), flush=True)
    paths = (report["direct"], report["nginx"])
    if report["errors"] or any(p["lost"] or p["duplicated"] or p["p50_ms"] is None for p in paths):
        print("proxy: notices were lost or duplicated, or a stream failed", file=sys.stderr)
        return True
    return False


def _report(
    scenario: str, run: t.Callable[[], dict[str, t.Any]], render: t.Callable[[dict[str, t.Any]], str]
) -> bool:
    """Run a one-server scenario, print its JSON line and table; True when it failed."""
    try:
        report = run()
    except RuntimeError as exc:
        print(f"FAIL {scenario}: {exc}", file=sys.stderr)
        return True
    print(json.dumps(report), flush=True)
    print(render(report), flush=True)
    return False


def _limit(runs: int, requests: int, streams: int) -> bool:
    """Run the limit scenario, print its JSON line and table; True when it failed."""
    if ab_binary() is None:
        return _unavailable("limit", "ab is not installed (apt-get install apache2-utils)")
    return _report("limit", lambda: limit(runs, requests, streams), render_limit)


def _pending(runs: int, requests: int, streams: int, count: int) -> bool:
    """Run the pending scenario, print its JSON line and table; True when it failed."""
    if ab_binary() is None:
        return _unavailable("pending", "ab is not installed (apt-get install apache2-utils)")
    return _report("pending", lambda: pending(runs, requests, streams, count), render_pending)


def _fallback(runs: int, requests: int) -> bool:
    """Run the fallback scenario, print its JSON line and table; True when it failed."""
    if ab_binary() is None:
        return _unavailable("fallback", "ab is not installed (apt-get install apache2-utils)")
    return _report("fallback", lambda: fallback(runs, requests), render_fallback)


def _stores(runs: int, requests: int, streams: int) -> bool:
    """Run the stores scenario, print its JSON line and table; True when it failed."""
    import glob
    import shutil

    if ab_binary() is None:
        return _unavailable("stores", "ab is not installed (apt-get install apache2-utils)")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return _unavailable("stores", "PostgreSQL is not installed (apt-get install postgresql)")
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        return _unavailable("stores", "redis-server is not installed (apt-get install redis-server)")
    return _report("stores", lambda: stores(runs, requests, streams), render_stores)


def _scaling(
    runs: int, streams: int, notices: int, rate: float, workers: t.Sequence[int], store: str = "redis"
) -> bool:
    """Run the scaling scenario, print its JSON line and table; True when it failed."""
    import shutil

    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        return _unavailable("scaling", "redis-server is not installed (apt-get install redis-server)")
    return _report("scaling", lambda: scaling(runs, streams, notices, rate, workers, store), render_scaling)


def _instructions(small: int, large: int, together: int = 1) -> bool:
    """Run the instructions scenario, print its JSON line and table; True when it failed."""
    if valgrind_binary() is None:
        return _unavailable("instructions", "valgrind is not installed (apt-get install valgrind)")
    return _report("instructions", lambda: instructions(small, large, together=together), render_instructions)


def _c100k(streams: int, workers: int, runs: int, broadcasts: int) -> bool:
    peers = ["sse_notify"]
    why = compare.missing("nchan")
    if why:
        if _unavailable("c100k (nchan)", why):
            return True
    else:
        peers.append("nchan")

    def run() -> dict[str, t.Any]:
        report = c100k(streams, workers, runs, peers, broadcasts)
        if report["problems"]:
            raise RuntimeError("; ".join(report["problems"]) + "\n" + render_c100k(report))
        return report

    return _report("c100k", run, render_c100k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        help="crossworker (the default), proxy, limit, pending, fallback, stores, scaling, instructions, "
        "c100k, idle, connect, fanout, unicast, churn; 'scenarios' for the last five, 'all' for every one",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny run of every scenario (or those named) against every peer: proves the harness works",
    )
    parser.add_argument(
        "--streams", type=int, help="N streams (crossworker: 200, instructions: 1200, the others: 2000)"
    )
    parser.add_argument("--notices", type=int, default=500, help="crossworker, proxy: notices to publish")
    parser.add_argument("--rate", type=float, default=100.0, help="crossworker, proxy: notices per second")
    parser.add_argument(
        "--requests", type=int, default=20000, help="limit, pending, fallback, stores: POSTs per ab run"
    )
    parser.add_argument(
        "--pending",
        type=int,
        default=100_000,
        help="pending: scheduled notices waiting in the store (100,000)",
    )
    parser.add_argument("--runs", type=int, default=3, help="repeat and report the median of each figure")
    parser.add_argument(
        "--store", choices=("redis", "cluster"), default="redis", help="scaling: a Redis, or a Redis Cluster"
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEER_NAMES),
        help=f"comma-separated, of {', '.join(PEER_NAMES)} (default: all)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure of the comparison here")
    parser.add_argument("--step-seconds", type=float, help="unicast: seconds per rate step (3)")
    parser.add_argument("--idle-seconds", type=float, help="idle: the quiet window (10)")
    parser.add_argument("--processes", type=int, help="load-generator processes (2, more when N needs)")
    parser.add_argument("--workers", type=int, default=6, help="c100k: gunicorn workers, and nginx's (6)")
    args = parser.parse_args(argv)
    chosen: list[str] = []
    for name in args.scenarios:
        if name == "scenarios":
            chosen += PEER_SCENARIOS
        elif name == "all":
            chosen += EVERY
        else:
            chosen.append(name)
    if not chosen:
        chosen = list(EVERY) if args.smoke else ["crossworker"]
    unknown = set(chosen) - set(EVERY)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = set(peers) - set(PEER_NAMES)
    if bad or not peers:
        parser.error(f"unknown peer(s): {', '.join(sorted(bad))} (one of {', '.join(PEER_NAMES)})")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    failed = False
    if "crossworker" in chosen:
        if args.smoke:
            args.notices, args.rate, args.runs = 20, 50.0, 1
        failed |= _crossworker(args, 8 if args.smoke else (args.streams or 200))
    if "proxy" in chosen:
        failed |= _proxy(10, 50.0, 1) if args.smoke else _proxy(args.notices, args.rate, args.runs)
    if "limit" in chosen:
        if args.smoke:
            failed |= _limit(1, 500, 200)
        else:
            failed |= _limit(args.runs, args.requests, args.streams or 5000)
    if "pending" in chosen:
        if args.smoke:
            failed |= _pending(1, 500, 200, 2000)
        else:
            failed |= _pending(args.runs, args.requests, args.streams or 5000, args.pending)
    if "fallback" in chosen:
        failed |= _fallback(1, 500) if args.smoke else _fallback(args.runs, args.requests)
    if "stores" in chosen:
        streams = 100 if args.smoke else args.streams or 2000
        failed |= _stores(1, 500, streams) if args.smoke else _stores(args.runs, args.requests, streams)
    if "scaling" in chosen:
        if args.smoke:
            failed |= _scaling(1, 20, 40, 100.0, (1, 2), args.store)
        else:
            notices, rate = args.notices * 4, args.rate * 4
            failed |= _scaling(args.runs, args.streams or 400, notices, rate, (1, 2, 4, 8), args.store)
    if "instructions" in chosen:
        large = 60 if args.smoke else (args.streams or 1200)
        failed |= _instructions(max(1, large // 6), large, together=2 if args.smoke else 1)
    if "c100k" in chosen:
        if args.smoke:
            failed |= _c100k(300, 2, 1, 1)
        else:
            failed |= _c100k(args.streams or 100_000, args.workers, args.runs, 3)
    scenarios = [s for s in PEER_SCENARIOS if s in chosen]
    if scenarios:
        if args.smoke:
            load, runs = Load.smoke(), 1
        else:
            load, runs = Load(streams=args.streams or 2000), args.runs
        if args.step_seconds is not None:
            load.step_seconds = args.step_seconds
        if args.idle_seconds is not None:
            load.idle_seconds = args.idle_seconds
        if args.processes is not None:
            load.processes = args.processes
        require_all = os.environ.get("SSE_NOTIFY_REQUIRE_ALL") == "1"
        report = compare.run(scenarios, peers, load, runs, require_all=require_all)
        table = render(
            report["results"],
            peers,
            report["skipped"],
            load.streams,
            runs,
            compare.settings(report["machine"]),
        )
        report["table"] = table
        print(table, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(_clean(report), indent=1, allow_nan=False) + "\n")
            print(f"every figure: {args.json}", file=sys.stderr)
        found = compare.problems(report, strict=args.smoke)
        for problem in found:
            print(f"FAIL {problem}", file=sys.stderr)
        failed |= bool(found)
    took = time.monotonic() - started
    print(
        f"{'smoke' if args.smoke else 'bench'}: {'FAILED' if failed else 'ok'} in {took:.1f}s",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
