"""The scenarios of issue #5, each run against one started :class:`~bench.peers.Peer`.

Every scenario takes a started peer and a :class:`Load` and returns a flat dict of figures
(numbers, ``None`` where a figure does not apply) plus ``"detail"`` (per-step and per-broadcast
records), ``"flags"`` (``{figure: why it is suspect}``) and ``"notes"``. Streams are held by
:class:`~bench.loadgen.LoadGen` (source addresses 127.0.0.2-250), notices are sent by
:class:`~bench.publisher.Publisher`; server figures come from /proc (:mod:`bench.procfs`) by the
peer's PIDs. Everything is bounded in count and time and stops by itself.

- :func:`idle`: N streams (user-0..user-N-1), then a quiet window: server RSS per stream
  (serving worker; all server processes; for flask-sse also redis-server), CPU at rest.
- :func:`connect`: how fast N streams open (as the server counts them) and how many fail.
- :func:`fanout`: time from one broadcast to the last of N clients having it; then a sustained
  series of broadcasts a fixed interval apart (does a backlog grow?), deliveries lost.
- :func:`unicast`: one notice per POST to random users at rising rates; achieved rate, publish
  round-trip p99, publish-to-receive p50/p99/max, lost. Then, where the peer has it (sse_notify's
  ``POST /notices``), batched publishing at rising notices per second.
- :func:`churn`: with notices flowing, close a fraction of the streams and reopen them, a few
  times; reconnects per second, server RSS / open descriptors / stream count before and after.

"Open" means counted by the server (:meth:`Peer.stream_count`). A peer that cannot hold N
streams (flask-sse needs two descriptors per stream) is measured with what it reached, which
every scenario reports as ``reached`` next to ``streams`` (the N asked for).

The client's own CPU is recorded with every measurement: the busiest load-generator process and
the publisher, each in % of one core over the measured window. A figure is flagged
``client-bound`` when either was at least :data:`BUSY` of a core (the client, not the server,
may be what limits it), and ``machine-bound`` when client and server together used at least
:data:`BUSY` of every core of this machine.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import typing as t
from dataclasses import asdict, dataclass, field

from bench import procfs
from bench.loadgen import MAX_PER_PROCESS, LoadGen, connect_rate, percentile
from bench.peers import Peer
from bench.publisher import Job, Publisher

__all__ = [
    "BUSY",
    "SCENARIOS",
    "Load",
    "Streams",
    "churn",
    "connect",
    "fanout",
    "idle",
    "open_streams",
    "unicast",
]

#: A process at or above this share of a core is "busy" (client-bound flags).
BUSY = 0.85
CORES = os.cpu_count() or 1


@dataclass
class Load:
    """The load every peer gets (the same for all of them in one comparison)."""

    streams: int = 2000
    #: Load-generator processes (None: 2, or more when ``streams`` needs them).
    processes: int | None = None
    #: Quiet window of :func:`idle`, seconds (sse_notify's heartbeat is set to 5 s for the bench).
    idle_seconds: float = 10.0
    #: Pause after the streams are open, before measuring.
    settle_seconds: float = 1.0
    #: Single broadcasts in :func:`fanout` (the median is reported).
    fanout_broadcasts: int = 5
    #: The sustained series of :func:`fanout`: this many broadcasts, ``sustained_interval`` apart.
    sustained_count: int = 20
    sustained_interval: float = 0.2
    #: Target rates of :func:`unicast`, notices per second, one notice per POST.
    rates: tuple[float, ...] = (
        100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2400, 2800, 3200,
        4000, 5000, 6400, 8000, 10000, 12800, 16000, 20000, 25600,
    )  # fmt: skip
    #: Target rates of the batched steps (peers with a batch endpoint), notices per second.
    batch_rates: tuple[float, ...] = (1000, 2000, 5000, 10000, 20000, 40000)
    batch_size: int = 100
    #: Seconds per rate step.
    step_seconds: float = 3.0
    #: Publisher connections (keep-alive).
    publisher_connections: int = 8
    #: :func:`churn`: cycles, share of the streams closed and reopened per cycle, notice rate.
    churn_cycles: int = 5
    churn_fraction: float = 0.1
    churn_rate: float = 200.0
    #: Waiting gives up when nothing moved for this long (a peer reached what it can).
    stall_seconds: float = 10.0
    #: How long :func:`churn` waits for the server to notice the closed streams (sse_notify
    #: notices a closed client when a write fails, two to three heartbeats after the close).
    settle_max_seconds: float = 18.0
    #: Publish-to-receive p99 above this (ms) ends the rate steps: the peer no longer keeps up.
    max_p99_ms: float = 1000.0
    #: Achieved rate below this share of the target ends the rate steps.
    min_achieved: float = 0.9
    seed: int = 5

    @classmethod
    def smoke(cls) -> Load:
        """Tiny: proves every scenario runs end to end, measures nothing."""
        return cls(
            streams=30,
            processes=1,
            idle_seconds=1.0,
            settle_seconds=0.2,
            fanout_broadcasts=2,
            sustained_count=5,
            sustained_interval=0.1,
            rates=(50, 100),
            batch_rates=(300, 600),
            batch_size=10,
            step_seconds=0.5,
            publisher_connections=2,
            churn_cycles=2,
            churn_fraction=0.2,
            churn_rate=50.0,
            stall_seconds=5.0,
            settle_max_seconds=0.5,
        )

    def loadgen_processes(self) -> int:
        need = -(-self.streams // MAX_PER_PROCESS)
        return max(need, self.processes if self.processes is not None else 2)

    def as_dict(self) -> dict[str, t.Any]:
        return asdict(self)


# -- helpers ---------------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else round(seconds * 1000, 2)


def _median(values: t.Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return round(statistics.median(present), 2) if present else None


def _pct(part: float, whole: float) -> float:
    return round(100 * part / whole, 1) if whole > 0 else 0.0


def _user(i: int) -> str:
    return f"user-{i}"


@dataclass
class ClientCPU:
    """CPU use over a measured window, in % of one core, and what it implies."""

    wall_s: float
    loadgen_busiest_pct: float
    loadgen_total_pct: float
    publisher_pct: float | None = None
    server_pct: float | None = None
    flag: str | None = field(default=None)

    @classmethod
    def of(
        cls,
        wall: float,
        gen_before: t.Sequence[float],
        gen_after: t.Sequence[float],
        publisher_cpu: float | None = None,
        server_cpu: float | None = None,
    ) -> ClientCPU:
        deltas = [b - a for a, b in zip(gen_before, gen_after, strict=True)] or [0.0]
        out = cls(
            wall_s=round(wall, 3),
            loadgen_busiest_pct=_pct(max(deltas), wall),
            loadgen_total_pct=_pct(sum(deltas), wall),
            publisher_pct=None if publisher_cpu is None else _pct(publisher_cpu, wall),
            server_pct=None if server_cpu is None else _pct(server_cpu, wall),
        )
        busy = 100 * BUSY
        if out.loadgen_busiest_pct >= busy or (out.publisher_pct or 0) >= busy:
            out.flag = "client-bound"
        elif out.loadgen_total_pct + (out.publisher_pct or 0) + (out.server_pct or 0) >= busy * CORES:
            out.flag = "machine-bound"
        return out


class Streams:
    """N streams held by a :class:`LoadGen` against a peer (see :func:`open_streams`)."""

    def __init__(self, peer: Peer, gen: LoadGen, asked: int, wanted: int) -> None:
        self.peer = peer
        self.gen = gen
        #: Streams opened (N, or the peer's capacity when that is lower).
        self.asked = asked
        #: N.
        self.wanted = wanted
        #: Streams the server counts once opening stopped.
        self.reached = 0
        #: The client's count: answered with 200 (``open``), or requests out (``held``, for a
        #: server that answers with its first event only).
        self.client = 0
        self.counter = "open" if peer.early_headers else "held"
        self.failed = 0
        self.open_s = math.nan
        self.connect_per_s = math.nan
        self.client_connect_per_s = math.nan
        self.errors: dict[str, int] = {}
        self.cpu = ClientCPU(0, 0, 0)
        self.server_cpu_s = 0.0

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gen.stop()

    def users(self) -> list[int]:
        """Indexes of the streams the server has subscribed (all of them, unless it fell short)."""
        if self.reached >= self.asked:
            return list(range(self.asked))
        subscribed = self.peer.subscribed()
        if subscribed is not None:
            return [i for i in range(self.asked) if _user(i) in subscribed]
        opened, _held = self.gen.indexes()
        return opened

    def figures(self) -> dict[str, t.Any]:
        capped = self.asked if self.asked < self.wanted else None
        return {"streams": self.wanted, "reached": self.reached, "capped_at": capped}


def _count(peer: Peer, load: Load) -> int:
    """N, or fewer when the peer cannot hold N and keep working (:meth:`Peer.stream_capacity`)."""
    capacity = peer.stream_capacity()
    return load.streams if capacity is None else min(load.streams, capacity)


def _cap_note(peer: Peer, s: Streams) -> list[str]:
    if s.asked >= s.wanted:
        return []
    return [f"capped: {peer.name} opened {s.asked:,} of {s.wanted:,} streams ({peer.capacity_reason()})"]


def _paths(peer: Peer, urls: t.Iterable[str]) -> list[str]:
    base = peer.base_url
    out = []
    for url in urls:
        if not url.startswith(base):
            raise ValueError(f"{url} is not on {base}")
        out.append(url[len(base) :] or "/")
    return out


def _server_count(peer: Peer) -> int:
    try:
        return peer.stream_count()
    except Exception:
        return -1


def open_streams(peer: Peer, load: Load, urls: list[str]) -> Streams:
    """Open a stream to each of ``urls`` and wait until the server counts them all, or until
    neither the server's count nor the client's moved for ``load.stall_seconds``."""
    gen = LoadGen(
        "127.0.0.1",
        peer.port,
        _paths(peer, urls),
        processes=load.loadgen_processes(),
        early_headers=peer.early_headers,
        connect_timeout=15.0,
        retries=1,
        max_runtime=900.0,
    )
    streams = Streams(peer, gen, len(urls), max(len(urls), load.streams))
    before = procfs.sample(peer.roles())
    gen.start()
    try:
        samples: list[tuple[float, int]] = []
        last: tuple[int, int] = (-2, -2)
        moved = time.monotonic()
        limit = moved + 120 + len(urls) / 100
        while True:
            server = _server_count(peer)
            client = gen.counters()[streams.counter]
            now = time.monotonic()
            samples.append((time.time(), server))
            if (server, client) != last:
                last, moved = (server, client), now
            if server >= len(urls) or now - moved >= load.stall_seconds or now >= limit or not gen.alive():
                break
            time.sleep(0.05 if len(urls) < 1000 else 0.1)
        after = procfs.sample(peer.roles())
        stats = gen.collect()
        streams.reached = max(0, samples[-1][1])
        streams.client = gen.counters()[streams.counter]
        streams.failed = stats["failed"]
        streams.errors = stats["errors"]
        reached_at = next((at for at, n in samples if n >= streams.reached), samples[-1][0])
        start = stats["first_dial"] or before["at"]
        streams.open_s = reached_at - start
        if streams.reached > 0 and streams.open_s > 0:
            streams.connect_per_s = streams.reached / streams.open_s
        if peer.early_headers:
            streams.client_connect_per_s = connect_rate(stats["connect_times"])
        wall = after["at"] - start
        streams.server_cpu_s = procfs.delta(before, after, "all", "cpu_s")
        streams.cpu = ClientCPU.of(
            max(wall, 1e-3),
            stats["cpu_first_dial_per_worker"],
            stats["cpu_per_worker"],
            server_cpu=streams.server_cpu_s,
        )
    except BaseException:
        gen.stop()
        raise
    return streams


def _target(request: t.Any) -> tuple[str, dict[str, str]]:
    """Path and the headers worth keeping (authorization) of an httpx request."""
    path = request.url.raw_path.decode()
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    return path, headers


def _publisher(peer: Peer, load: Load, headers: dict[str, str]) -> Publisher:
    return Publisher("127.0.0.1", peer.port, headers, connections=load.publisher_connections).start()


def _user_paths(peer: Peer, indexes: t.Iterable[int]) -> tuple[list[str], dict[str, str]]:
    template, headers = _target(peer.publish_request("XUSERX", {}))
    return [template.replace("XUSERX", _user(i)) for i in indexes], headers


def _result(
    figures: dict[str, t.Any], detail: dict[str, t.Any], flags: dict[str, str], notes: list[str]
) -> dict[str, t.Any]:
    return {**figures, "detail": detail, "flags": flags, "notes": notes}


# -- idle ------------------------------------------------------------------------------------


def idle(peer: Peer, load: Load) -> dict[str, t.Any]:
    """N streams open, then a quiet window: RSS per stream and CPU at rest."""
    roles = peer.roles()
    base = procfs.sample(roles)
    with open_streams(peer, load, [peer.stream_url(_user(i)) for i in range(_count(peer, load))]) as s:
        time.sleep(load.settle_seconds)
        count_before = _server_count(peer)
        roles = peer.roles()
        m0 = procfs.sample(roles)
        gen0 = s.gen.cpu_per_process()
        client_min = s.gen.counters()[s.counter]
        end = time.monotonic() + load.idle_seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            client_min = min(client_min, s.gen.counters()[s.counter])
        time.sleep(0.6)  # the load generator publishes its CPU time every 0.5 s
        m1 = procfs.sample(roles)
        gen1 = s.gen.cpu_per_process()
        count_after = _server_count(peer)
        wall = m1["at"] - m0["at"]
    n = max(1, s.reached)
    server_cpu = procfs.delta(m0, m1, "all", "cpu_s")
    cpu = ClientCPU.of(wall, gen0, gen1, server_cpu=server_cpu)
    per_role = {
        role: {
            "rss_before_kib": base[role]["rss_kib"] if role in base else None,
            "rss_with_streams_kib": m1[role]["rss_kib"],
            "rss_per_stream_kib": round(procfs.delta(base, m1, role, "rss_kib") / n, 2),
            "cpu_s_in_window": round(procfs.delta(m0, m1, role, "cpu_s"), 3),
            "fds": m1[role]["fds"],
            "pids": m1[role]["pids"],
        }
        for role in m1
        if role not in ("at",)
    }
    redis = per_role.get("redis")
    figures = {
        **s.figures(),
        "server_streams_min": min(count_before, count_after),
        "client_streams_min": client_min,
        "rss_worker_kib_per_stream": per_role["worker"]["rss_per_stream_kib"],
        "rss_all_kib_per_stream": per_role["all"]["rss_per_stream_kib"],
        "rss_redis_kib_per_stream": redis["rss_per_stream_kib"] if redis else None,
        "cpu_rest_pct": _pct(server_cpu, wall),
        "loadgen_cpu_pct": cpu.loadgen_busiest_pct,
    }
    counted = {
        "sse_notify": "gunicorn master + its one worker",
        "nchan": "nginx master + its one worker (Nchan's shared memory is counted where it is touched)",
        "flask-sse": "gunicorn master + its one worker + redis-server (one pub/sub connection per stream)",
    }
    notes = [
        f"RSS (VmRSS) per stream = (RSS with {s.reached} streams - RSS before any stream) / {s.reached}; "
        f"'all' counts {counted.get(peer.name, 'every server process')}",
        f"CPU at rest: server processes over a {wall:.1f} s quiet window, % of one core",
    ]
    flags = {"cpu_rest_pct": cpu.flag} if cpu.flag else {}
    return _result(figures, {"roles": per_role, "cpu": asdict(cpu)}, flags, notes + _cap_note(peer, s))


# -- connect ---------------------------------------------------------------------------------


def connect(peer: Peer, load: Load) -> dict[str, t.Any]:
    """Open N streams as fast as the load generator dials (256 in flight per process)."""
    with open_streams(peer, load, [peer.stream_url(_user(i)) for i in range(_count(peer, load))]) as s:
        pass
    figures = {
        **s.figures(),
        "connect_per_s": round(s.connect_per_s, 1) if not math.isnan(s.connect_per_s) else None,
        "client_connect_per_s": None
        if math.isnan(s.client_connect_per_s)
        else round(s.client_connect_per_s, 1),
        "open_s": round(s.open_s, 2),
        "failed": s.failed,
        "server_cpu_pct": s.cpu.server_pct,
        "loadgen_cpu_pct": s.cpu.loadgen_busiest_pct,
    }
    flags = {"connect_per_s": s.cpu.flag} if s.cpu.flag else {}
    notes = [
        "rate = streams the server counts / seconds from the first dial until it counted them "
        "(polled every 0.1 s); client_connect_per_s is from the client's 200s (n/a when the "
        "server answers a stream only with its first event)"
    ]
    return _result(figures, {"errors": s.errors, "cpu": asdict(s.cpu)}, flags, notes + _cap_note(peer, s))


# -- fanout ----------------------------------------------------------------------------------


def fanout(peer: Peer, load: Load) -> dict[str, t.Any]:
    """Broadcast to N streams: time until the last client has it, single and sustained."""
    urls = [peer.broadcast_stream_url(_user(i)) for i in range(_count(peer, load))]
    flags: dict[str, str] = {}
    with open_streams(peer, load, urls) as s:
        expected = s.reached
        gen = s.gen
        time.sleep(load.settle_seconds)
        prev = gen.collect(reset=True)["cpu_per_worker"]
        singles: list[dict[str, t.Any]] = []
        stall = max(5.0, load.stall_seconds / 2)
        roles = peer.roles()
        for b in range(load.fanout_broadcasts):
            m0 = procfs.sample(roles)
            sent = time.time()
            peer.broadcast({"sent_at": sent, "b": b})
            gen.wait_counter("events", expected, stall=stall, limit=120)
            stats = gen.collect(reset=True)
            m1 = procfs.sample(roles)
            rec = stats["notices"].get(sent)
            wall = time.time() - sent
            cpu = ClientCPU.of(wall, prev, stats["cpu_per_worker"])
            prev = stats["cpu_per_worker"]
            ttl = rec[2] - sent if rec else math.nan
            # Client-bound: the busiest load-generator process was busy for most of the fan-out.
            busy_s = cpu.loadgen_busiest_pct / 100 * wall
            singles.append(
                {
                    "to_first_ms": _ms(rec[1] - sent) if rec else None,
                    "to_last_ms": _ms(ttl),
                    "delivered": stats["events"],
                    "expected": expected,
                    "loadgen_busy_ms": _ms(busy_s),
                    "server_cpu_ms": _ms(procfs.delta(m0, m1, "all", "cpu_s")),
                    "client_bound": bool(rec) and busy_s >= BUSY * ttl,
                }
            )
            time.sleep(0.3)
        # The sustained series, from the publisher (on time even when a POST is slow to answer).
        path, headers = _target(peer.broadcast_request({}))
        pub = _publisher(peer, load, headers)
        try:
            job = Job(targets=[path], rate=1 / load.sustained_interval, count=load.sustained_count)
            t0 = time.time()
            result = pub.run(job)
        finally:
            pub.stop()
        gen.wait_counter("events", expected * result["acked_notices"], stall=stall, limit=300)
        stats = gen.collect(reset=True)
        wall = time.time() - t0
        cpu = ClientCPU.of(wall, prev, stats["cpu_per_worker"], publisher_cpu=result["cpu_s"])
    series = sorted(stats["notices"].items())
    ttls = [rec[2] - sent for sent, rec in series]
    delivered = stats["events"]
    expected_total = expected * result["acked_notices"]
    to_last = [x["to_last_ms"] for x in singles if x["to_last_ms"] is not None]
    first = ttls[0] if ttls else math.nan
    last = ttls[-1] if ttls else math.nan
    # No growing backlog: the worst broadcast of the series is not much slower than one alone.
    alone = statistics.median(to_last) / 1000 if to_last else (first if ttls else math.nan)
    keeps_up = bool(ttls) and max(ttls) <= 2 * alone + 0.1 and delivered >= expected_total
    if any(x["client_bound"] for x in singles):
        flags["fanout_to_last_ms"] = "client-bound"
    if cpu.flag:
        flags["sustained_to_last_median_ms"] = cpu.flag
    figures = {
        **s.figures(),
        "fanout_to_last_ms": _median(to_last),
        "fanout_to_first_ms": _median([x["to_first_ms"] for x in singles]),
        "fanout_lost": sum(max(0, x["expected"] - x["delivered"]) for x in singles),
        "fanout_expected": sum(x["expected"] for x in singles),
        "sustained_to_last_first_ms": _ms(first),
        "sustained_to_last_median_ms": _ms(statistics.median(ttls)) if ttls else None,
        "sustained_to_last_last_ms": _ms(last),
        "sustained_keeps_up": 1 if keeps_up else 0,
        "sustained_delivered": delivered,
        "sustained_expected": expected_total,
        "sustained_lost": max(0, expected_total - delivered),
        "publish_errors": sum(result["errors"].values()) + result["requests"] - result["acked_requests"],
        "loadgen_cpu_pct": cpu.loadgen_busiest_pct,
    }
    notes = [
        "time to last = the last client's arrival - the publisher's sent_at (same clock)",
        f"sustained: {load.sustained_count} broadcasts {load.sustained_interval * 1000:.0f} ms apart; "
        "keeps up = every delivery arrived and the series' slowest broadcast took "
        "<= 2 x one broadcast alone (the median above) + 100 ms",
    ]
    if not peer.multiplexed:
        notes.append(f"{peer.name}: every client streams the broadcast channel (a connection of its own)")
    detail = {
        "singles": singles,
        "sustained_to_last_ms": [_ms(x) for x in ttls],
        "publisher": {k: v for k, v in result.items() if k != "rtt"},
        "cpu": asdict(cpu),
    }
    return _result(figures, detail, flags, notes + _cap_note(peer, s))


# -- unicast ---------------------------------------------------------------------------------


def _step(
    s: Streams, pub: Publisher, job: Job, prev_cpu: list[float], roles: dict[str, list[int]], load: Load
) -> tuple[dict[str, t.Any], list[float]]:
    m0 = procfs.sample(roles)
    result = pub.run(job)
    s.gen.wait_counter("events", result["acked_notices"], stall=3.0, limit=60)
    stats = s.gen.collect(reset=True)
    m1 = procfs.sample(roles)
    wall = m1["at"] - m0["at"]
    cpu = ClientCPU.of(
        wall,
        prev_cpu,
        stats["cpu_per_worker"],
        publisher_cpu=result["cpu_s"],
        server_cpu=procfs.delta(m0, m1, "all", "cpu_s"),
    )
    nominal = job.count / job.rate
    achieved = result["acked_notices"] / max(nominal, result["duration_s"])
    lat = stats["latencies"]
    rtt = result["rtt"]
    received = stats["events"]
    lost = max(0, result["acked_notices"] - received)
    p99 = _ms(percentile(lat, 99))
    step = {
        "target_per_s": job.rate,
        "batch": job.batch,
        "achieved_per_s": round(achieved, 1),
        "acked": result["acked_notices"],
        "received": received,
        "lost": lost,
        "unexpected": max(0, received - result["acked_notices"]),
        "publish_p50_ms": _ms(percentile(rtt, 50)),
        "publish_p99_ms": _ms(percentile(rtt, 99)),
        "recv_p50_ms": _ms(percentile(lat, 50)),
        "recv_p99_ms": p99,
        "recv_max_ms": _ms(max(lat)) if lat else None,
        "statuses": result["statuses"],
        "errors": result["errors"],
        "send_late_max_ms": _ms(result["late_max_s"]),
        "cpu": asdict(cpu),
    }
    step["ok"] = bool(
        achieved >= load.min_achieved * job.rate and lost == 0 and p99 is not None and p99 <= load.max_p99_ms
    )
    return step, stats["cpu_per_worker"]


def _steps(s: Streams, pub: Publisher, jobs: t.Iterator[Job], load: Load) -> list[dict[str, t.Any]]:
    roles = s.peer.roles()
    prev = s.gen.collect(reset=True)["cpu_per_worker"]
    steps = []
    for job in jobs:
        step, prev = _step(s, pub, job, prev, roles, load)
        steps.append(step)
        if not step["ok"]:
            break
    return steps


def _best(steps: list[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    ok = [x for x in steps if x["ok"]]
    return max(ok, key=lambda x: x["achieved_per_s"]) if ok else None


def _at(steps: list[dict[str, t.Any]], rate: float) -> dict[str, t.Any] | None:
    return next((x for x in steps if x["target_per_s"] == rate), None)


def unicast(peer: Peer, load: Load) -> dict[str, t.Any]:
    """Notices to random users at rising rates, one per POST; then batched where supported."""
    flags: dict[str, str] = {}
    notes = [
        f"rate steps of {load.step_seconds:g} s; a step is sustained when achieved >= "
        f"{load.min_achieved:.0%} of target, nothing lost and receive p99 <= {load.max_p99_ms:g} ms; "
        "the steps stop at the first that is not",
        "publish p99 = POST round trip at the publisher; receive = publisher's sent_at to the client's parse",
    ]
    with open_streams(peer, load, [peer.stream_url(_user(i)) for i in range(_count(peer, load))]) as s:
        users = s.users()
        if not users:
            raise RuntimeError("no stream opened")
        paths, headers = _user_paths(peer, users)
        time.sleep(load.settle_seconds)
        pub = _publisher(peer, load, headers)
        try:
            single = _steps(
                s,
                pub,
                (
                    Job(
                        targets=paths,
                        rate=rate,
                        count=max(1, int(rate * load.step_seconds)),
                        seed=load.seed + k,
                    )
                    for k, rate in enumerate(load.rates)
                ),
                load,
            )
            batched: list[dict[str, t.Any]] = []
            if peer.batch:
                path, _ = _target(peer.batch_request([(_user(users[0]), {})]))
                names = [_user(i) for i in users]
                batched = _steps(
                    s,
                    pub,
                    (
                        Job(
                            targets=[path],
                            rate=rate,
                            count=max(load.batch_size, int(rate * load.step_seconds)),
                            batch=load.batch_size,
                            batch_users=names,
                            seed=load.seed + 100 + k,
                        )
                        for k, rate in enumerate(load.batch_rates)
                    ),
                    load,
                )
        finally:
            pub.stop()
    best = _best(single)
    figures: dict[str, t.Any] = {
        **s.figures(),
        "unicast_max_per_s": best["achieved_per_s"] if best else 0,
        "unicast_publish_p99_ms": best["publish_p99_ms"] if best else None,
        "unicast_recv_p50_ms": best["recv_p50_ms"] if best else None,
        "unicast_recv_p99_ms": best["recv_p99_ms"] if best else None,
        "unicast_recv_max_ms": best["recv_max_ms"] if best else None,
        "unicast_max_per_s_p99_20ms": max(
            (x["achieved_per_s"] for x in single if x["ok"] and x["recv_p99_ms"] < 20), default=0
        ),
        "unicast_lost": sum(x["lost"] for x in single),
        "unicast_publisher_cpu_pct": best["cpu"]["publisher_pct"] if best else None,
        "unicast_loadgen_cpu_pct": best["cpu"]["loadgen_busiest_pct"] if best else None,
        "unicast_server_cpu_pct": best["cpu"]["server_pct"] if best else None,
    }
    if best and best["cpu"]["flag"]:
        flags["unicast_max_per_s"] = best["cpu"]["flag"]
    if best and best is single[-1] and best["target_per_s"] == load.rates[-1]:
        flags["unicast_max_per_s"] = "the top rate step was sustained: the peer's limit is higher"
    last = single[-1] if single else None
    if last is not None and not last["ok"] and last["cpu"]["flag"]:
        # The step that ended the series ran into the client's (or the machine's) limit.
        flags["unicast_max_per_s"] = f"{last['cpu']['flag']} at {last['target_per_s']:g}/s"
    if peer.batch:
        bbest = _best(batched)
        at10k = _at(batched, 10000)
        figures.update(
            {
                "batch_max_per_s": bbest["achieved_per_s"] if bbest else 0,
                "batch_recv_p99_ms": bbest["recv_p99_ms"] if bbest else None,
                "batch_publish_p99_ms": bbest["publish_p99_ms"] if bbest else None,
                "batch_10k_achieved_per_s": at10k["achieved_per_s"] if at10k else None,
                "batch_10k_recv_p99_ms": at10k["recv_p99_ms"] if at10k else None,
                "batch_10k_publish_p99_ms": at10k["publish_p99_ms"] if at10k else None,
                "batch_lost": sum(x["lost"] for x in batched),
            }
        )
        blast = batched[-1] if batched else None
        if blast is not None and blast["cpu"]["flag"]:
            flags["batch_max_per_s"] = f"{blast['cpu']['flag']} at {blast['target_per_s']:g}/s"
        if bbest and bbest is blast and bbest["target_per_s"] == load.batch_rates[-1]:
            flags["batch_max_per_s"] = "the top rate step was sustained: the limit is higher"
        notes.append(f"batched: POST /notices with {load.batch_size} notices per request")
    else:
        figures.update(
            dict.fromkeys(
                (
                    "batch_max_per_s",
                    "batch_recv_p99_ms",
                    "batch_publish_p99_ms",
                    "batch_10k_achieved_per_s",
                    "batch_10k_recv_p99_ms",
                    "batch_10k_publish_p99_ms",
                    "batch_lost",
                )
            )
        )
    return _result(figures, {"single": single, "batched": batched}, flags, notes + _cap_note(peer, s))


# -- churn -----------------------------------------------------------------------------------


def churn(peer: Peer, load: Load) -> dict[str, t.Any]:
    """Close and reopen a share of the streams, a few cycles, while notices flow to the others."""
    n = _count(peer, load)
    k = max(1, round(n * load.churn_fraction))
    cycles = max(1, min(load.churn_cycles, (n - max(1, n // 10)) // k))
    blocks = [list(range(c * k, (c + 1) * k)) for c in range(cycles)]
    churned = {i for block in blocks for i in block}
    with open_streams(peer, load, [peer.stream_url(_user(i)) for i in range(n)]) as s:
        gen = s.gen
        stable = [i for i in s.users() if i not in churned]
        if not stable:
            raise RuntimeError("no stream outside the churned ones opened")
        paths, headers = _user_paths(peer, stable)
        time.sleep(load.settle_seconds)
        roles = peer.roles()
        before = procfs.sample(roles)
        server_before = _server_count(peer)
        level = gen.counters()[s.counter]
        prev = gen.collect(reset=True)["cpu_per_worker"]
        pub = _publisher(peer, load, headers)
        try:
            pub.begin(
                Job(targets=paths, rate=load.churn_rate, count=int(load.churn_rate * 600), max_seconds=600)
            )
            t0 = time.time()
            done: list[dict[str, t.Any]] = []
            for block in blocks:
                made = None if peer.early_headers else peer.subscriptions_made()
                start = time.monotonic()
                closed = gen.redial(block)
                if made is None:
                    value = gen.wait_counter(s.counter, level, stall=load.stall_seconds, limit=120)
                    reopened = closed - max(0, level - value)
                else:
                    # The server answers only with a first event: count its new subscriptions.
                    reopened = _wait_subscriptions(peer, made + closed, load.stall_seconds) - made
                reopened = max(0, min(closed, reopened))
                done.append(
                    {"closed": closed, "reopened": reopened, "seconds": round(time.monotonic() - start, 3)}
                )
            time.sleep(0.5)
            pub.cancel()
            result = pub.finish(60)
        finally:
            pub.stop()
        gen.wait_counter("events", result["acked_notices"], stall=3.0, limit=60)
        stats = gen.collect(reset=True)
        wall = time.time() - t0
        # Wait for the server to notice the closed streams (sse_notify: at its next heartbeat).
        settle_end = time.monotonic() + load.settle_max_seconds
        server_after = _server_count(peer)
        while server_after > server_before and time.monotonic() < settle_end:
            time.sleep(0.25)
            server_after = _server_count(peer)
        after = procfs.sample(roles)
        client_after = gen.counters()[s.counter]
    cpu = ClientCPU.of(wall, prev, stats["cpu_per_worker"], publisher_cpu=result["cpu_s"])
    total = sum(x["closed"] for x in done)
    reopened = sum(x["reopened"] for x in done)
    seconds = sum(x["seconds"] for x in done)
    lost = max(0, result["acked_notices"] - stats["events"])
    figures = {
        **s.figures(),
        "churned": total,
        "reopened": reopened,
        "reconnects_per_s": round(reopened / seconds, 1) if seconds > 0 else None,
        "server_streams_before": server_before,
        "server_streams_after": server_after,
        # Streams the server still counts beyond the live ones (those never closed + the reopened).
        "stale_after": max(0, server_after - (s.reached - total + reopened)) if server_after >= 0 else None,
        "client_streams_after": client_after,
        "rss_worker_before_kib": before["worker"]["rss_kib"],
        "rss_worker_after_kib": after["worker"]["rss_kib"],
        "rss_worker_growth_kib": after["worker"]["rss_kib"] - before["worker"]["rss_kib"],
        "rss_all_growth_kib": after["all"]["rss_kib"] - before["all"]["rss_kib"],
        "fds_before": before["all"]["fds"],
        "fds_after": after["all"]["fds"],
        "fds_growth": after["all"]["fds"] - before["all"]["fds"],
        "notices_acked": result["acked_notices"],
        "churn_lost": lost,
        "loadgen_cpu_pct": cpu.loadgen_busiest_pct,
    }
    flags = {"reconnects_per_s": cpu.flag} if cpu.flag else {}
    if reopened < total:
        flags["reconnects_per_s"] = f"incomplete: {reopened:,} of {total:,} reopened before the wait stalled"
    notes = [
        f"{cycles} cycles, each closing {k} streams (a different block each time) and waiting until "
        "they are open again (the client has its 200; for a server that answers only with a first "
        "event, the server's count of subscriptions made grew by as many); "
        f"notices at {load.churn_rate:g}/s to the {len(stable)} streams never churned; "
        "reconnects/s = streams reopened / time spent reopening",
        f"after: once the server counts no more streams than before (at most {load.settle_max_seconds:g} s); "
        "fds and RSS over every server process ('all') and the serving worker",
    ]
    detail = {
        "cycles": done,
        "publisher": {k: v for k, v in result.items() if k != "rtt"},
        "before": before,
        "after": after,
        "cpu": asdict(cpu),
    }
    return _result(figures, detail, flags, notes + _cap_note(peer, s))


def _wait_subscriptions(peer: Peer, target: int, stall: float) -> int:
    """Poll :meth:`Peer.subscriptions_made` until it reaches ``target`` (or stalled)."""
    last, moved = -1, time.monotonic()
    limit = moved + 120
    while True:
        value = peer.subscriptions_made() or 0
        now = time.monotonic()
        if value != last:
            last, moved = value, now
        if value >= target or now - moved >= stall or now >= limit:
            return value
        time.sleep(0.02)


#: Scenario name -> function, in the order a full run takes them.
SCENARIOS: dict[str, t.Callable[[Peer, Load], dict[str, t.Any]]] = {
    "idle": idle,
    "connect": connect,
    "fanout": fanout,
    "unicast": unicast,
    "churn": churn,
}
