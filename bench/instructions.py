"""Instructions per new stream in the serving worker, counted by callgrind: a figure noise does not move.

This machine is shared, and a rate measured on it moves by 5-10 % from run to run, more
than most changes to the stream path are worth. ``valgrind --tool=callgrind`` counts the
instructions a process executes instead, the same for the same code and inputs whatever
else the machine is doing (the kernel's work in system calls is not in the count).

``python -m bench instructions`` starts ``gunicorn -k gevent -w 1`` under callgrind twice
per app, opens ``small`` and then ``large`` streams (one user each, a valid token,
``bench.loadgen``), lets the worker end by itself (its master is killed, the orphaned
worker sees it and exits, so callgrind writes its count), and reports
``(count(large) - count(small)) / (large - small)``: what one more stream costs the worker,
opening it and, at the worker's end, closing it, without the start-up. The apps are
sse_notify (``wsgi:app``, the default SQLite store) and the bare streaming app of the
limit scenario (``bench.peers.limit_app:streams``), the stack's own floor.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.limit import BIN, ROOT
from bench.loadgen import LoadGen, format_paths
from sse_notify.auth import issue_token

__all__ = ["APPS", "instructions", "render_instructions", "valgrind_binary"]

#: What is measured, by name: the gunicorn app of each.
APPS = {"sse_notify": "wsgi:app", "bare streaming app": "bench.peers.limit_app:streams"}


def valgrind_binary() -> str | None:
    """valgrind (Debian's valgrind), if installed."""
    return shutil.which("valgrind")


def _count(app: str, streams: int, folder: Path) -> int:
    """Instructions the worker of ``app`` executed in all, having opened ``streams`` streams."""
    secret = "instructions-benchmark-secret-0123456789abc"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = folder / f"{app.replace(':', '_')}-{streams}"
    out.mkdir()
    env = {
        **os.environ,
        "FLASK_SECRET_KEY": secret,
        "SSE_NOTIFY_PUBLISH_KEYS": "k" * 32,
        "SSE_NOTIFY_RATE_LIMIT": "",
        "SSE_NOTIFY_HEARTBEAT": "5",
        "SSE_NOTIFY_BROKER_URL": f"sqlite:///{folder}/{out.name}.sqlite3",
    }
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p"]
    cmd += [str(BIN / "python"), str(BIN / "gunicorn"), "--no-control-socket", "-k", "gevent", "-w", "1"]
    cmd += ["--worker-connections", "20000", "--timeout", "600", "--graceful-timeout", "3"]
    cmd += ["-b", f"127.0.0.1:{port}", app]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{app} did not start under valgrind")
        users = [{"user": f"u{i}", "token": issue_token(secret, f"u{i}", 3600)} for i in range(streams)]
        paths = format_paths("/connection/{user}?token={token}", users)
        gen = LoadGen("127.0.0.1", port, paths, processes=2)
        gen.start()
        try:
            opened = gen.wait_connected(600)
            if opened < streams:
                raise RuntimeError(f"{app}: only {opened} of {streams} streams opened under valgrind")
            time.sleep(1)
        finally:
            gen.stop()
        worker = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
    finally:
        proc.kill()  # the orphaned worker sees its parent gone and ends itself: callgrind writes
        proc.wait()
    deadline = time.monotonic() + 120
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.2)
    found = glob.glob(f"{out}/callgrind.out.{worker}")
    if not found:
        raise RuntimeError(f"{app}: callgrind wrote no count for the worker")
    for line in Path(found[0]).read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{app}: no totals in {found[0]}")


def instructions(small: int, large: int, *, together: int = 1) -> dict[str, t.Any]:
    """Instructions per stream of each app (see the module docstring), and their ratio.

    :param together: how many of the four counts run at once (the smoke run takes 2: a count
        does not change with what else runs, but timers fire a little differently, so the
        figures of docs/BENCHMARKS.md are taken one at a time).
    """
    runs = [(name, app, n) for name, app in APPS.items() for n in (small, large)]
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp, ThreadPoolExecutor(together) as pool:
        found = list(pool.map(lambda run: _count(run[1], run[2], Path(tmp)), runs))
    counts = {name: found[i * 2 : i * 2 + 2] for i, name in enumerate(APPS)}
    per_stream = {name: (pair[1] - pair[0]) / (large - small) for name, pair in counts.items()}
    ours, bare = per_stream["sse_notify"], per_stream["bare streaming app"]
    return {
        "scenario": "instructions",
        "streams": [small, large],
        "per_stream": {name: round(value) for name, value in per_stream.items()},
        "ratio": round(ours / bare, 3),
        "counts": counts,
    }


def render_instructions(report: dict[str, t.Any]) -> str:
    """The report as a markdown table."""
    small, large = report["streams"]
    lines = [
        f"instructions: callgrind, one gunicorn -k gevent worker, {small} and {large} streams",
        "",
        "| app | instructions per stream | / bare app |",
        "|---|---:|---:|",
    ]
    bare = report["per_stream"]["bare streaming app"]
    for name, value in report["per_stream"].items():
        lines.append(f"| {name} | {value:,} | {value / bare:.2f}x |")
    return "\n".join(lines)
