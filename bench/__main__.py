"""Benchmarks: ``python -m bench [scenario ...] [--smoke]``.

Scenario ``crossworker``: ``gunicorn -k gevent -w 4`` on the default SQLite
store; streams of one user spread over every worker; notices are published
one per POST at a fixed rate through the same server (so through random
workers). Each notice carries the publisher's wall-clock time; each client
records when it arrived. Reported: publish-to-receive latency (every
delivery) p50/p99/max, lost and duplicated deliveries, and the client's own
CPU time (a client-bound number is called that).

Load is bounded (``--streams``, ``--notices``, ``--rate``), loopback only, and
every server started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["crossworker"], help="crossworker (the default)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only proves the harness works")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--notices", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="notices per second")
    parser.add_argument("--runs", type=int, default=3, help="repeat and report the median of each figure")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - {"crossworker"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.smoke:
        args.streams, args.notices, args.rate, args.runs = 8, 20, 50.0, 1
    failed = False
    for name in args.scenarios:
        runs = [asyncio.run(crossworker(args.streams, args.notices, args.rate)) for _ in range(args.runs)]
        report = dict(runs[0])
        for key in ("p50_ms", "p99_ms", "max_ms", "client_cpu_s"):
            values = [r[key] for r in runs if r[key] is not None]
            report[key] = statistics.median(values) if values else None
        report["lost"] = sum(r["lost"] for r in runs)
        report["duplicated"] = sum(r["duplicated"] for r in runs)
        report["runs"] = args.runs
        print(json.dumps(report))
        if report["lost"] or report["duplicated"] or report["deliveries"] == 0:
            print(f"{name}: notices were lost or duplicated", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
