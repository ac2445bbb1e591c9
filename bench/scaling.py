"""Scenario ``scaling``: what one notice costs Redis and the workers as workers are added (issue #17).

For each worker count (1, 2, 4 and 8 by default), on a fresh ``redis-server`` of its own: one
``gunicorn -k gevent -w N`` on the Redis store holds the same ``--streams`` SSE streams (one user
each, spread over the workers by the kernel), and the same ``--notices`` are published one per
POST at ``--rate`` per second, each to one of those users. Measured over the publishing, per
notice:

- **Redis output bytes** (``total_net_output_bytes`` of ``INFO stats``, reset before);
- **Redis commands** (``total_commands_processed``);
- **worker CPU** (``utime + stime`` of every worker, from /proc), less what the workers spend at
  rest over as long (heartbeats, presence, the scheduler's polls: measured just before, and
  reported on its own).

Every notice must reach its stream (the scenario fails otherwise). With one pub/sub channel that
every worker subscribes to, each notice is sent to every worker: the output bytes and the CPU
per notice grow with the number of workers. Issue #17's targeted delivery must keep them within
20 % from 1 to 8 workers. Loopback only; every server started here is stopped by PID.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import httpx

from bench.limit import _Server, setup
from bench.loadgen import LoadGen
from bench.procfs import cpu_seconds

__all__ = ["render_scaling", "scaling"]

#: Worker counts, in the order of the table.
WORKERS = (1, 2, 4, 8)
#: What is measured per notice: Redis output bytes, Redis commands, worker CPU (µs); and the
#: workers' CPU at rest (% of one core), which the CPU per notice leaves out.
FIGURES = ("bytes", "commands", "cpu_us", "idle_cpu_pct")


def _publish(url: str, key: str, users: int, notices: int, rate: float) -> None:
    """``notices`` POSTs at ``rate`` per second from 4 threads, user ``i % users`` for the i-th."""
    interval = 4 / rate
    errors: list[str] = []

    def send(start: int) -> None:
        began = time.monotonic()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
            for k, i in enumerate(range(start, notices, 4)):
                delay = began + k * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                answer = client.post(f"/users/user-{i % users}/notices", json={"title": "Score", "n": i})
                if answer.status_code != 201:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=send, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} publishes failed, the first: {errors[0]}")


def _one(workers: int, streams: int, notices: int, rate: float, tmp: str) -> dict[str, float]:
    """The per-notice figures of one run with ``workers`` workers."""
    import redis

    from tests.support import RedisServer, children

    _secret, key, env, paths = setup(streams)
    store = RedisServer(Path(tmp) / f"redis-{workers}", appendfsync="everysec").start()
    server = _Server("wsgi:app", {**env, "SSE_NOTIFY_BROKER_URL": store.url}, workers=workers)
    try:
        deadline = time.monotonic() + 30
        while len(pids := children(server.proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        with LoadGen("127.0.0.1", server.port, paths, processes=2) as load:
            if load.wait_connected(60) < streams:
                raise RuntimeError(f"only {load.counters()['open']} of {streams} streams opened")
            before_events = load.counters()["events"]
            client = redis.Redis(port=store.port)
            # The workers' CPU at rest (heartbeats, presence, the scheduler's polls) over as long
            # as the publishing takes: what the notices cost is the difference.
            idle = sum(cpu_seconds(pid) for pid in pids)
            time.sleep(notices / rate)
            idle = sum(cpu_seconds(pid) for pid in pids) - idle
            client.config_resetstat()
            began, cpu = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
            _publish(server.url, key, streams, notices, rate)
            got = load.wait_events(before_events + notices, 30) - before_events
            if got < notices:
                raise RuntimeError(f"only {got} of {notices} notices reached their stream")
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
            busy = time.monotonic() - began
            stats = client.info("stats")
            client.close()
    finally:
        server.stop()
        store.stop()
    return {
        "bytes": stats["total_net_output_bytes"] / notices,
        "commands": stats["total_commands_processed"] / notices,
        # The rest's CPU scaled to the publishing's duration, taken off.
        "cpu_us": max(0.0, cpu - idle * busy / (notices / rate)) * 1e6 / notices,
        "idle_cpu_pct": idle * 100 / (notices / rate),
    }


def scaling(
    runs: int, streams: int, notices: int, rate: float, workers: t.Sequence[int] = WORKERS
) -> dict[str, t.Any]:
    """Each worker count ``runs`` times (the counts rotating run by run); medians per notice."""
    figures: dict[int, list[dict[str, float]]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            order = list(workers[run % len(workers) :]) + list(workers[: run % len(workers)])
            for count in order:
                figures[count].append(_one(count, streams, notices, rate, f"{tmp}/{run}"))
    medians = {
        count: {name: round(statistics.median(f[name] for f in each), 1) for name in FIGURES}
        for count, each in figures.items()
    }
    first = medians[workers[0]]
    return {
        "scenario": "scaling",
        "mode": "one channel",
        "runs": runs,
        "streams": streams,
        "notices": notices,
        "rate": rate,
        "per_notice": {str(count): values for count, values in medians.items()},
        "growth": {
            name: round(medians[workers[-1]][name] / first[name], 2) if first[name] else None
            for name in FIGURES
        },
    }


def render_scaling(result: dict[str, t.Any]) -> str:
    """The Markdown table of a ``scaling`` run."""
    lines = [
        "| workers | Redis output [bytes/notice] | Redis commands [/notice] | worker CPU [µs/notice] "
        "| workers at rest [% of a core] |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count, v in result["per_notice"].items():
        lines.append(
            f"| {count} | {v['bytes']:,.0f} | {v['commands']:.1f} | {v['cpu_us']:,.0f} "
            f"| {v['idle_cpu_pct']:.1f} |"
        )
    counts = list(result["per_notice"])
    growth = [f"{g}x" if g is not None else "n/a" for g in result["growth"].values()]
    lines.append(f"| {counts[-1]} / {counts[0]} | " + " | ".join(growth) + " |")
    return "\n".join(lines)
