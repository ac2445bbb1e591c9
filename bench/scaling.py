"""Scenario ``scaling``: what one notice costs Redis and the workers as workers are added (issue #17).

For each worker count (1, 2, 4 and 8 by default), on a fresh ``redis-server`` of its own: one
``gunicorn -k gevent -w N`` on the Redis store holds the same ``--streams`` SSE streams (one user
each, spread over the workers by the kernel), and the same ``--notices`` are published one per
POST at ``--rate`` per second, each to one of those users. Measured over the publishing, per
notice:

- **Redis output bytes** (``total_net_output_bytes`` of ``INFO stats``, reset before);
- **Redis commands** (``total_commands_processed``) and **Redis CPU** (``used_cpu_sys`` +
  ``used_cpu_user`` of ``INFO cpu``), in all and on the busiest node (a cluster's);
- **worker CPU** (``utime + stime`` of every worker, from /proc), less what the workers spend at
  rest over as long (heartbeats, presence, the scheduler's polls: measured just before, and
  reported on its own), and the workers' **wake-ups** (voluntary context switches): a worker
  with more to do handles several events per wake-up of its event loop, an idle one pays a
  sleep and a wake-up for each;
- the same **worker CPU with the notices stored from outside** (a publisher process with the
  Python API, as a backend service would): delivery alone, without the POSTs' handling;
- the **stack's own** worker CPU per request for the same POSTs to a bare Flask endpoint with as
  many workers (:mod:`bench.peers.limit_app`): what gunicorn, gevent and Flask cost as workers
  are added on this machine.

With ``--store cluster`` the store is a Redis Cluster of its own (three primaries, three
replicas, ``redis+cluster://``; the default ``?replicas=1``: each write waits for a replica), and
the Redis figures are summed over its six nodes (a primary's output includes what it sends its
replica).

Every notice must reach its stream (the scenario fails otherwise). With one pub/sub channel that
every worker subscribes to, each notice was sent to every worker: the output bytes and the CPU
per notice grew with the number of workers. Targeted delivery (issue #17) must keep them within
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
from bench.procfs import cpu_seconds, wakeups

__all__ = ["render_scaling", "scaling"]

#: Worker counts, in the order of the table.
WORKERS = (1, 2, 4, 8)
#: What is measured per notice: Redis output bytes, Redis commands, worker CPU (µs) with the
#: publishes POSTed to the workers, a bare Flask endpoint's for the same POSTs (the stack's own),
#: and sse_notify's with the notices stored from outside (delivery alone); and the workers' CPU
#: at rest (% of one core), which the CPU per notice leaves out.
FIGURES = (
    "bytes",
    "commands",
    "redis_cpu_us",
    "redis_top_cpu_us",
    "cpu_us",
    "wakeups",
    "stack_cpu_us",
    "feed_cpu_us",
    "idle_cpu_pct",
)


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


class _Nodes:
    """The Redis servers of a store (one, or a cluster's six), read as one for INFO figures."""

    def __init__(self, kind: str, directory: Path) -> None:
        from tests.support import RedisCluster, RedisServer

        if kind == "cluster":
            self.cluster: t.Any = RedisCluster(directory, appendfsync="everysec").start()
            self.servers = self.cluster.nodes
            self.url = self.cluster.url
        else:
            self.cluster = None
            self.servers = [RedisServer(directory, appendfsync="everysec").start()]
            self.url = self.servers[0].url

    def _clients(self) -> list[t.Any]:
        import redis

        return [redis.Redis(port=server.port) for server in self.servers]

    def reset(self) -> None:
        """Zero every node's INFO counters."""
        for client in self._clients():
            client.config_resetstat()
            client.close()

    def cpu(self) -> list[float]:
        """Seconds of CPU each node has used (main thread and the others), from ``INFO cpu``."""
        seconds = []
        for client in self._clients():
            cpu = client.info("cpu")
            seconds.append(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))
            client.close()
        return seconds

    def stats(self) -> dict[str, float]:
        """``INFO stats``, summed over the nodes."""
        total: dict[str, float] = {"total_net_output_bytes": 0.0, "total_commands_processed": 0.0}
        for client in self._clients():
            stats = client.info("stats")
            for name in total:
                total[name] += float(stats[name])
            client.close()
        return total

    def stop(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.stop()


def _one(workers: int, streams: int, notices: int, rate: float, tmp: str, kind: str) -> dict[str, float]:
    """The per-notice figures of one run with ``workers`` workers."""
    from tests.support import children

    _secret, key, env, paths = setup(streams)
    store = _Nodes(kind, Path(tmp) / f"{kind}-{workers}")
    server = _Server("wsgi:app", {**env, "SSE_NOTIFY_BROKER_URL": store.url}, workers=workers)
    try:
        deadline = time.monotonic() + 30
        while len(pids := children(server.proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        with LoadGen("127.0.0.1", server.port, paths, processes=2) as load:
            if load.wait_connected(60) < streams:
                raise RuntimeError(f"only {load.counters()['open']} of {streams} streams opened")
            before_events = load.counters()["events"]
            # The workers' CPU at rest (heartbeats, presence, the scheduler's polls) over as long
            # as the publishing takes: what the notices cost is the difference.
            idle = sum(cpu_seconds(pid) for pid in pids)
            time.sleep(notices / rate)
            idle = sum(cpu_seconds(pid) for pid in pids) - idle
            store.reset()
            redis_cpu = store.cpu()
            began, cpu = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
            woke = sum(wakeups(pid) for pid in pids)
            _publish(server.url, key, streams, notices, rate)
            got = load.wait_events(before_events + notices, 30) - before_events
            if got < notices:
                raise RuntimeError(f"only {got} of {notices} notices reached their stream")
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
            woke = sum(wakeups(pid) for pid in pids) - woke
            busy = time.monotonic() - began
            stats = store.stats()
            redis_cpu = [after - before for before, after in zip(redis_cpu, store.cpu(), strict=True)]
            # Then the same notices stored by a publisher outside the workers (a backend's own
            # process, with the Python API): what the workers spend is delivery alone.
            before_events = load.counters()["events"]
            began, feed_cpu = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
            _publish_to_store(store.url, streams, notices, rate)
            got = load.wait_events(before_events + notices, 30) - before_events
            if got < notices:
                raise RuntimeError(f"only {got} of {notices} notices stored from outside reached a stream")
            feed_cpu = sum(cpu_seconds(pid) for pid in pids) - feed_cpu
            feed_busy = time.monotonic() - began
    finally:
        server.stop()
        store.stop()
    # The rest's CPU scaled to each phase's duration, taken off.
    at_rest = idle / (notices / rate)
    return {
        "bytes": stats["total_net_output_bytes"] / notices,
        "commands": stats["total_commands_processed"] / notices,
        "redis_cpu_us": sum(redis_cpu) * 1e6 / notices,
        "redis_top_cpu_us": max(redis_cpu) * 1e6 / notices,
        "cpu_us": max(0.0, cpu - at_rest * busy) * 1e6 / notices,
        "wakeups": woke / notices,
        "feed_cpu_us": max(0.0, feed_cpu - at_rest * feed_busy) * 1e6 / notices,
        "idle_cpu_pct": at_rest * 100,
    }


def _stack(workers: int, streams: int, notices: int, rate: float) -> float:
    """Worker CPU per request (µs) of a bare Flask JSON endpoint on ``workers`` workers, POSTed alike.

    The stack's own cost of a POST as workers are added (:mod:`bench.peers.limit_app`), beside
    sse_notify's: what grows in both is gunicorn, gevent, Flask and the machine, not delivery.
    """
    from tests.support import children

    server = _Server("bench.peers.limit_app:app", {}, workers=workers)
    try:
        deadline = time.monotonic() + 30
        while len(pids := children(server.proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(notices / rate)
        idle = sum(cpu_seconds(pid) for pid in pids) - idle
        began, cpu = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
        _publish(server.url, "unused", streams, notices, rate)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
        busy = time.monotonic() - began
    finally:
        server.stop()
    return max(0.0, cpu - idle * busy / (notices / rate)) * 1e6 / notices


def _publish_to_store(url: str, users: int, notices: int, rate: float) -> None:
    """``notices`` publishes straight to the store at ``rate`` per second, user ``i % users``."""
    from sse_notify.brokers import make_broker
    from sse_notify.notices import dumps

    broker = make_broker(url)
    began = time.monotonic()
    try:
        for i in range(notices):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            broker.publish(f"user-{i % users}", dumps({"title": "Score", "n": i}))
    finally:
        broker.close()


def scaling(
    runs: int,
    streams: int,
    notices: int,
    rate: float,
    workers: t.Sequence[int] = WORKERS,
    store: str = "redis",
) -> dict[str, t.Any]:
    """Each worker count ``runs`` times (the counts rotating run by run); medians per notice."""
    figures: dict[int, list[dict[str, float]]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            order = list(workers[run % len(workers) :]) + list(workers[: run % len(workers)])
            for count in order:
                one = _one(count, streams, notices, rate, f"{tmp}/{run}", store)
                one["stack_cpu_us"] = _stack(count, streams, notices, rate)
                figures[count].append(one)
    medians = {
        count: {name: round(statistics.median(f[name] for f in each), 1) for name in FIGURES}
        for count, each in figures.items()
    }
    first = medians[workers[0]]
    return {
        "scenario": "scaling",
        "store": store,
        "commit": _commit(),
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


def _commit() -> str:
    """The commit measured (``+`` when the work tree has changes)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()

    changed = git("status", "--porcelain", "--", "sse_notify")
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


def render_scaling(result: dict[str, t.Any]) -> str:
    """The Markdown table of a ``scaling`` run."""
    lines = [
        "| workers | Redis output [bytes/notice] | Redis commands [/notice] | Redis CPU [µs/notice] "
        "| busiest Redis node's CPU [µs/notice] "
        "| worker CPU, POSTed [µs/notice] | worker wake-ups, POSTed [/notice] "
        "| bare Flask, POSTed [µs/request] | worker CPU, delivery alone [µs/notice] "
        "| workers at rest [% of a core] |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for count, v in result["per_notice"].items():
        lines.append(
            f"| {count} | {v['bytes']:,.0f} | {v['commands']:.1f} | {v['redis_cpu_us']:,.0f} "
            f"| {v.get('redis_top_cpu_us', 0):,.0f} "
            f"| {v['cpu_us']:,.0f} | {v.get('wakeups', 0):.1f} | {v['stack_cpu_us']:,.0f} "
            f"| {v['feed_cpu_us']:,.0f} | {v['idle_cpu_pct']:.1f} |"
        )
    counts = list(result["per_notice"])
    growth = [f"{g}x" if g is not None else "n/a" for g in result["growth"].values()]
    lines.append(f"| {counts[-1]} / {counts[0]} | " + " | ".join(growth) + " |")
    return "\n".join(lines)
