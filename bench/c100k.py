"""Scenario ``c100k`` (issue #18): a hundred thousand streams on one box, beside Nchan in the same run.

``python -m bench c100k --streams 100000 --workers 6 --runs 3`` runs, for each run, sse_notify
(``gunicorn -k gevent -w W wsgi:app`` with the repository's gunicorn.conf.py, SQLite, tokens on,
default settings but the publish rate limit) and then Nchan (nginx with W worker processes and
``reuseport``, its best setting for many workers), each freshly started:

1. **open**: N streams, one per user, from a multi-process load generator
   (:class:`bench.loadgen.LoadGen`: at most ``MAX_PER_PROCESS`` sockets per process, under a
   20,000 open-files limit) with EventSource's reconnection on. Reported: streams open, how
   long they took, and the streams the server refused (sse_notify's
   ``sse_notify_evictions_total{reason="overloaded"}``; such a client comes back later);
2. **memory**: RSS and PSS (shared pages counted once) summed over every server process
   (master and workers, worker baselines included), and per open stream. Kernel socket
   buffers are not in either;
3. **broadcast**: three broadcasts one at a time; the time until the last client has each
   (the publisher's ``sent_at`` to the last arrival, same clock), its median, the deliveries
   missed, and where the CPU went meanwhile: the server's processes and the load generator's
   (what limits a broadcast on a 2-core box is shown by these two together);
4. **publish**: the round trip of a publish to one user with N streams open (median of 20);
5. **reconnect storms** (sse_notify), twice: every worker killed (SIGKILL) with N streams
   open, then a deploy (``kill -HUP`` of the master: new workers start, the old ones close
   their streams). After the kill, gunicorn starts new workers, and the clients come back by
   EventSource's reconnection after the ``retry:`` of their stream's first frame, which the
   server spreads over the time the host needs to take them all again; after the deploy,
   after the ``retry:`` of the closing frame, spread the same way. A broadcast is published
   as soon as the server answers again. Reported, for each: the time until every client has
   come back (each dialled again and all open), the storm broadcast's deliveries
   (each stream once: a stream that got an id at or below one it had counts as a duplicate),
   streams refused for good (a status other than 200: EventSource would give up) and the
   refusals that sent a client back for later.

``--smoke`` runs it at 300 streams and 2 workers (the CI's bench smoke run covers the code path).
Load is bounded (N, the load generator's ``max_runtime``), loopback only, and every server
started here is stopped by PID.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import time
import typing as t

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from bench.loadgen import MAX_PER_PROCESS, LoadGen
from bench.peers import Nchan, Peer, SSENotify
from bench.report import fmt

__all__ = ["c100k", "render_c100k"]

#: Nchan's heartbeat, as sse_notify's default (15 s): idle streams cost both alike.
HEARTBEAT = 15
#: What the issue asks of the whole server (KiB per stream) and of a broadcast to all (seconds).
MEMORY_BOUND_KIB = 4.0
BROADCAST_BOUND_S = 1.5
STORM_BOUND_S = 60.0


def _peer(name: str, workers: int) -> Peer:
    if name == "sse_notify":
        return SSENotify(workers=workers, env={"SSE_NOTIFY_RATE_LIMIT": ""})
    return Nchan(ping_interval=HEARTBEAT, workers=workers)


def _overloaded(peer: Peer) -> int:
    """Streams sse_notify refused so far (every worker's count, from /metrics); 0 for others."""
    if not isinstance(peer, SSENotify):
        return 0
    text = httpx.get(peer.base_url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sse_notify_evictions_total" and sample.labels.get("reason") == "overloaded":
                return int(sample.value)
    return 0


def _memory(peer: Peer) -> dict[str, int]:
    pids = [pid for group in peer.roles().values() for pid in group]
    return {
        "processes": len(pids),
        "rss_kib": sum(procfs.rss_kib(pid) for pid in pids),
        "pss_kib": sum(procfs.pss_kib(pid) for pid in pids),
    }


def _broadcast(peer: Peer, gen: LoadGen, expected: int, tag: dict[str, t.Any]) -> dict[str, t.Any]:
    """One broadcast to every stream: time to the last client, missed, CPU of server and clients."""
    roles = peer.roles()
    m0, c0 = procfs.sample(roles), gen.cpu_seconds()
    sent = time.time()
    peer.broadcast({"sent_at": sent, **tag})
    gen.wait_counter("events", expected, stall=10, limit=60)
    stats = gen.collect(reset=True)
    m1, c1 = procfs.sample(roles), gen.cpu_seconds()
    rec = stats["notices"].get(sent)
    return {
        "to_last_s": rec[2] - sent if rec else math.nan,
        "to_first_s": rec[1] - sent if rec else math.nan,
        "delivered": rec[0] if rec else 0,
        "missed": expected - (rec[0] if rec else 0),
        "server_cpu_s": procfs.delta(m0, m1, "all", "cpu_s"),
        "loadgen_cpu_s": c1 - c0,
    }


def _publish_rtt(peer: Peer, count: int = 20) -> float:
    times = []
    for n in range(count):
        started = time.perf_counter()
        peer.publish("u0", {"sent_at": time.time(), "rtt": n})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _storm(peer: SSENotify, gen: LoadGen, expected: int, limit: float, how: str) -> dict[str, t.Any]:
    """Kill every worker (``how="kill"``) or reload (``"reload"``: SIGHUP to the master) with
    ``expected`` streams open; measure the clients' return (see the module docstring)."""
    gen.collect(reset=True)
    before = gen.counters()
    refused_before = _overloaded(peer)
    roles = peer.roles()
    workers = roles.get("worker", [])
    killed_at = time.time()
    if how == "kill":
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    else:
        os.kill(roles["master"][0], signal.SIGHUP)
    sent = math.nan
    while time.time() - killed_at < limit:  # publish as soon as a new worker answers
        try:
            stamp = time.time()
            peer.broadcast({"sent_at": stamp, "storm": True})
            sent = stamp
            break
        except (httpx.HTTPError, RuntimeError):
            time.sleep(0.05)
    published_s = sent - killed_at
    back_s = math.nan
    lowest = expected
    while time.time() - killed_at < limit:
        now = gen.counters()
        lowest = min(lowest, now["open"])
        if now["reconnects"] - before["reconnects"] >= expected and now["open"] >= expected:
            back_s = time.time() - killed_at
            break
        time.sleep(0.05)
    gen.wait_counter("events", expected, stall=15, limit=60)
    stats = gen.collect(reset=True)
    after = gen.counters()
    rec = stats["notices"].get(sent)
    comebacks = sorted(at - killed_at for at in stats["connect_times"] if at >= killed_at)
    return {
        "workers": len(workers),
        "published_after_s": published_s,
        "all_back_s": back_s,
        "lowest_open": lowest,
        "reconnected": len(comebacks),
        "back_p50_s": comebacks[len(comebacks) // 2] if comebacks else math.nan,
        "storm_delivered": rec[0] if rec else 0,
        "storm_missed": expected - (rec[0] if rec else 0),
        "duplicates": after["duplicates"] - before["duplicates"],
        "refused_for_good": after["failed"] - before["failed"],
        "refused_for_later": _overloaded(peer) - refused_before,
        "errors": stats["errors"],
    }


def _one(name: str, streams: int, workers: int, broadcasts: int, storm: bool) -> dict[str, t.Any]:
    """One fresh server of peer ``name``: open, memory, broadcasts, publish, storm."""
    processes = max(2, math.ceil(streams / (MAX_PER_PROCESS - 1000)))
    with _peer(name, workers) as peer:
        paths = [peer.stream_url(f"u{i}").removeprefix(peer.base_url) for i in range(streams)]
        gen = LoadGen(
            "127.0.0.1",
            peer.port,
            paths,
            processes=processes,
            reconnect=True,
            max_inflight=500,
            connect_timeout=30,
            max_runtime=1800,
        )
        with gen:
            started = time.time()
            gen.wait_connected(300, streams)
            # Streams refused for later come back after their retry: wait for the count to settle.
            gen.wait_counter("open", streams, stall=12, limit=120)
            opened = gen.counters()["open"]
            open_s = max(gen.collect()["connect_times"] or [started]) - started
            refused = _overloaded(peer)
            time.sleep(3)
            memory = _memory(peer)
            gen.collect(reset=True)
            singles = [_broadcast(peer, gen, opened, {"b": b}) for b in range(broadcasts)]
            rtt = _publish_rtt(peer)
            time.sleep(1)
            gen.collect(reset=True)
            result: dict[str, t.Any] = {
                "peer": name,
                "streams": streams,
                "open": opened,
                "loadgen_processes": processes,
                "open_s": open_s,
                "refused_while_opening": refused,
                **memory,
                "kib_per_stream_rss": memory["rss_kib"] / max(1, opened),
                "kib_per_stream_pss": memory["pss_kib"] / max(1, opened),
                "broadcast_to_last_s": statistics.median(s["to_last_s"] for s in singles),
                "broadcast_missed": sum(s["missed"] for s in singles),
                "broadcast_server_cpu_s": statistics.median(s["server_cpu_s"] for s in singles),
                "broadcast_loadgen_cpu_s": statistics.median(s["loadgen_cpu_s"] for s in singles),
                "broadcasts": singles,
                "publish_rtt_ms": rtt * 1000,
            }
            if storm and isinstance(peer, SSENotify):
                result["storm"] = _storm(peer, gen, opened, STORM_BOUND_S * 2, "kill")
                gen.wait_counter("open", opened, stall=15, limit=60)
                result["reload"] = _storm(peer, gen, opened, STORM_BOUND_S * 2, "reload")
    return result


def c100k(
    streams: int, workers: int, runs: int, peers: t.Sequence[str], broadcasts: int = 3
) -> dict[str, t.Any]:
    """Every run: each peer on a fresh server, in turn; the figures of each, and their medians."""
    every: dict[str, list[dict[str, t.Any]]] = {name: [] for name in peers}
    for _ in range(runs):
        for name in peers:
            every[name].append(_one(name, streams, workers, broadcasts, storm=name == "sse_notify"))
    medians: dict[str, dict[str, t.Any]] = {}
    for name, results in every.items():
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and k != "streams"]
        medians[name] = {k: statistics.median(r[k] for r in results) for k in keys}
        for kind in ("storm", "reload"):
            if kind not in results[0]:
                continue
            storms = [r[kind] for r in results]
            medians[name][kind] = {
                k: statistics.median(s[k] for s in storms)
                for k, v in storms[0].items()
                if isinstance(v, (int, float))
            }
            medians[name][kind]["all_back_worst_s"] = max(s["all_back_s"] for s in storms)
            for k in ("storm_missed", "duplicates", "refused_for_good"):
                medians[name][kind][k] = sum(s[k] for s in storms)
        medians[name]["broadcast_missed"] = sum(r["broadcast_missed"] for r in results)
    return {
        "scenario": "c100k",
        "streams": streams,
        "workers": workers,
        "runs": runs,
        "cpus": os.cpu_count(),
        "medians": medians,
        "results": every,
        "problems": _problems(medians, streams),
    }


def _problems(medians: dict[str, dict[str, t.Any]], streams: int) -> list[str]:
    """What the issue asks and a run did not hold (the smoke run fails on any)."""
    found: list[str] = []
    ours = medians.get("sse_notify")
    if ours is None:
        return found
    if ours["open"] < streams:
        found.append(f"sse_notify opened {ours['open']} of {streams} streams")
    if ours["refused_while_opening"]:
        found.append(f"sse_notify refused {ours['refused_while_opening']} streams while workers had room")
    if ours["broadcast_missed"]:
        found.append(f"sse_notify broadcasts missed {ours['broadcast_missed']} deliveries")
    for kind in ("storm", "reload"):
        storm = ours.get(kind)
        if storm is None:
            continue
        if not storm["all_back_worst_s"] <= STORM_BOUND_S:
            found.append(f"{kind}: not every client was back within {STORM_BOUND_S:.0f} s")
        for key in ("storm_missed", "duplicates", "refused_for_good"):
            if storm[key]:
                found.append(f"{kind}: {key} = {storm[key]}")
    return found


def render_c100k(report: dict[str, t.Any]) -> str:
    """A Markdown table: each figure per peer, and sse_notify / Nchan."""
    medians = report["medians"]
    names = list(medians)
    rows = [
        ("streams open", "open", 0),
        ("seconds to open them", "open_s", 1),
        ("refused while workers had room", "refused_while_opening", 0),
        ("server processes", "processes", 0),
        ("memory, RSS summed (MiB)", "rss_mib", 0),
        ("memory, PSS summed (MiB)", "pss_mib", 0),
        ("KiB per stream, RSS", "kib_per_stream_rss", 2),
        ("KiB per stream, PSS", "kib_per_stream_pss", 2),
        ("broadcast to the last client (ms)", "broadcast_ms", 0),
        ("broadcast deliveries missed", "broadcast_missed", 0),
        ("server CPU per broadcast (s)", "broadcast_server_cpu_s", 2),
        ("load generator CPU per broadcast (s)", "broadcast_loadgen_cpu_s", 2),
        ("publish round trip (ms)", "publish_rtt_ms", 1),
    ]
    for m in medians.values():
        m["rss_mib"] = m["rss_kib"] / 1024
        m["pss_mib"] = m["pss_kib"] / 1024
        m["broadcast_ms"] = m["broadcast_to_last_s"] * 1000
    head = f"| {report['streams']:,} streams, {report['workers']} workers, median of {report['runs']} |"
    head += "".join(f" {n} |" for n in names)
    ratio = len(names) == 2
    lines = [
        head + (f" {names[0]} / {names[1]} |" if ratio else ""),
        "|---" + "|---:" * (len(names) + ratio) + "|",
    ]
    for label, key, digits in rows:
        cells = [medians[n].get(key, math.nan) for n in names]
        line = f"| {label} |" + "".join(f" {fmt(c, digits=digits)} |" for c in cells)
        if ratio:
            a, b = cells
            line += f" {a / b:.2f}x |" if isinstance(a, (int, float)) and b else " |"
        lines.append(line)
    for kind, title in (("storm", "every worker killed"), ("reload", "a deploy: kill -HUP")):
        storm = medians.get("sse_notify", {}).get(kind)
        if not storm:
            continue
        s = {
            k: fmt(storm[k], digits=1)
            for k in ("all_back_s", "all_back_worst_s", "back_p50_s", "published_after_s")
        }
        lines += [
            "",
            f"| Reconnect storm (sse_notify: {title}) | median | worst |",
            "|---|---:|---:|",
            f"| every client back (s) | {s['all_back_s']} | {s['all_back_worst_s']} |",
            f"| half of them back (s) | {s['back_p50_s']} | |",
            f"| broadcast published after the signal (s) | {s['published_after_s']} | |",
            f"| storm broadcast missed / duplicated (sum) | {storm['storm_missed']:,} / "
            f"{storm['duplicates']:,} | |",
            f"| refused for good / sent back for later | {storm['refused_for_good']:,} / "
            f"{fmt(storm['refused_for_later'], digits=0)} | |",
        ]
    if report["problems"]:
        lines += ["", *(f"- PROBLEM: {p}" for p in report["problems"])]
    return "\n".join(lines)
