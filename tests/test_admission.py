"""A full worker leaves new connections to the others: streams are refused only when every worker is full."""

from __future__ import annotations

import collections
import os
import signal
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

import gevent
import httpx
import pytest

from bench.loadgen import LoadGen
from sse_notify import admission
from sse_notify.admission import Admission, Table, should_pause
from sse_notify.hub import Hub

from .sse_client import Subscriber, decode, named, retry_of, subscribe
from .support import Server, scrape, wait_for


def test_a_full_worker_pauses_only_while_a_peer_has_room() -> None:
    """should_pause: full with a peer that has room, yes; every peer full, no (each accepts and refuses)."""
    assert should_pause(10, 10, [(3, 10)])
    assert should_pause(10, 10, [(10, 10), (9, 10)])
    assert not should_pause(10, 10, [(10, 10), (10, 10)])
    assert not should_pause(10, 10, [])
    assert not should_pause(9, 10, [(0, 10)]), "a worker with room paused to even out the counts"


def test_table_rows_are_claimed_released_and_go_stale() -> None:
    """Table: the master hands out free rows; a worker sees the others' while their heartbeat is fresh."""
    table = Table(rows=3)
    rows = [table.claim() for _ in range(3)]
    assert rows == [0, 1, 2]
    assert table.claim() is None, "a full table gave out a row twice"
    table.release(1)
    assert table.claim() == 1
    for row in rows:
        table.own(row)
    table.write(0, 5, 10, beat=True)
    table.write(1, 7, 10, beat=True)
    table.write(2, 9, 10)  # never beat: a worker that has not started ticking
    assert table.peers(0) == [(7, 10)]
    stale = admission._now_ms() - int(admission.STALE * 1000) - 1
    table._cells[1 * 4 + 3] = stale
    assert table.peers(0) == [], "a worker whose heartbeat is old still counted"


class _Server:
    """What :class:`Admission` asks of a listening server."""

    started, closed, accepting = True, False, True

    def stop_accepting(self) -> None:
        self.accepting = False

    def start_accepting(self) -> None:
        self.accepting = True


def test_accepted_connections_count_until_they_settle() -> None:
    """A worker one short of full pauses at its next accept, before that connection opens a stream."""
    table = Table(rows=2)
    mine, peer = table.claim(), table.claim()
    assert mine is not None
    assert peer is not None
    table.own(peer)
    table.write(peer, 0, 10, beat=True)  # a live peer with room
    table.own(mine)
    hub = Hub(max_streams=3)
    gate = Admission(table, mine)
    server = _Server()
    gate.servers.append(server)
    gate.add(hub)
    settled: list[int] = []
    handle = gate.settling(lambda: settled.append(gate.pending))
    gate.accepted()
    gate.accepted()
    assert (gate.pending, gate.paused) == (2, False)
    gate.accepted()  # a burst: the third is accepted before any of them opened a stream
    assert (gate.paused, server.accepting) == (True, False), "filled by accepted ones, it kept accepting"
    assert table.peers(peer) == [(3, 3)], "the row did not count the pending connections"
    gevent.spawn(handle).join()  # a connection whose request ended (a publish) settles
    assert settled == [3]
    assert gate.pending == 2
    gate.tick()
    assert (gate.paused, server.accepting) == (False, True), "a worker with room again stayed paused"

    def open_stream() -> None:  # as a stream opens in its connection's greenlet
        stream = hub.connect("alice")
        assert not stream.closed
        settled.append(gate.pending)

    gevent.spawn(gate.settling(open_stream)).join()
    assert settled[-1] == 1, "a connection that opened a stream still counted as pending"
    assert gate.pending == 1
    assert len(hub.streams) == 1


def _wait_until_every_worker_counts(server: Server, workers: int) -> None:
    """Until a worker sees every other one live: a worker still booting is not counted on for room."""

    def all_live() -> bool:
        state = httpx.get(server.url + "/_debug/objects", timeout=5).json()
        return len(state["admission"]["peers"]) == workers - 1

    wait_for(all_live, 20, f"all {workers} workers to write their rows")


def _open(server: Server, user: str) -> Subscriber:
    return subscribe(server.stream_url(user))


def _refused(server: Server, user: str) -> int:
    """Open a stream that must be refused: a 200 closed at once; its retry."""
    with httpx.Client(timeout=10) as client, client.stream("GET", server.stream_url(user)) as response:
        assert response.status_code == 200
        raw = response.read()
    blocks = decode(raw)
    assert b"overloaded" in raw, raw
    assert b"connected" not in raw, raw
    assert named(blocks) == [], raw
    retry = retry_of(blocks)
    assert retry is not None, raw
    assert retry >= 2500, raw
    return retry


@pytest.mark.server
@pytest.mark.timeout(120)
def test_every_worker_fills_before_a_stream_is_refused(make_server: t.Callable[..., Server]) -> None:
    """Three workers of 30 streams take 90 streams with no refusal; the 91st-95th are refused and counted."""
    server = make_server(workers=3, app="tests.instrumented:app", SSE_NOTIFY_MAX_STREAMS="30")
    _wait_until_every_worker_counts(server, 3)
    # In bursts of 30: a worker one short of full accepts several connections at once.
    with ThreadPoolExecutor(30) as pool:
        subs = list(pool.map(lambda n: _open(server, f"u{n}"), range(90)))
    try:
        ended = [(s.pid, s.rest()) for s in subs if s.ended.is_set()]
        assert not ended, ended
        # The metrics are written in batches: wait for the last of them.
        wait_for(lambda: scrape(server)[("sse_notify_streams_open", ())] == 90, 10, "90 streams counted")
        assert scrape(server)[("sse_notify_evictions_total", (("reason", "overloaded"),))] == 0
        per_worker = collections.Counter(s.pid for s in subs)
        assert sorted(per_worker.values()) == [30, 30, 30], per_worker
        for n in range(5):
            _refused(server, f"late{n}")
        overloaded = ("sse_notify_evictions_total", (("reason", "overloaded"),))
        wait_for(lambda: scrape(server)[overloaded] == 5, 10, "5 refusals counted")
        # A stream that closes makes room again, on its worker.
        subs.pop().close()
        wait_for(lambda: scrape(server)[("sse_notify_streams_open", ())] == 89, 10, "the stream to close")
        again = wait_for(lambda: _try_open(server, "again"), 10, "a stream to be taken again")
        again.close()
    finally:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(Subscriber.close, subs))


def _try_open(server: Server, user: str) -> Subscriber | None:
    sub = subscribe(server.stream_url(user))
    time.sleep(0.2)
    if sub.ended.is_set():
        sub.close()
        return None
    return sub


@pytest.mark.server
@pytest.mark.timeout(120)
def test_a_stopped_worker_does_not_hold_new_streams_back(make_server: t.Callable[..., Server]) -> None:
    """A full worker whose only peer is stopped (SIGSTOP) past STALE refuses at once, not queueing clients."""
    server = make_server(workers=2, app="tests.instrumented:app", SSE_NOTIFY_MAX_STREAMS="10")
    first = _open(server, "first")
    stopped = next(pid for pid in server.worker_pids() if str(pid) != first.pid)

    def sees_its_peer() -> bool:  # both booted and ticking: the stopped one counted until STALE
        state = httpx.get(server.url + "/_debug/objects", timeout=5).json()
        return state["pid"] == int(first.pid) and len(state["admission"]["peers"]) == 1

    wait_for(sees_its_peer, 20, "the first stream's worker to see the other one")
    os.kill(stopped, signal.SIGSTOP)
    try:
        time.sleep(admission.STALE + 0.5)
        subs = [_open(server, f"u{n}") for n in range(9)]
        assert {s.pid for s in subs} == {first.pid}
        # Full now. Were the stopped worker still counted as having room, this one would
        # wait in the kernel's queue for it; it is refused at once, to come back later.
        started = time.monotonic()
        _refused(server, "late")
        assert time.monotonic() - started < 5
    finally:
        os.kill(stopped, signal.SIGCONT)
    for sub in [first, *subs]:
        sub.close()


@pytest.mark.server
@pytest.mark.timeout(120)
def test_every_worker_killed_clients_come_back_and_get_the_storm_notice_once(
    make_server: t.Callable[..., Server],
) -> None:
    """Every worker SIGKILLed under 200 streams: all come back; a notice sent meanwhile reaches each once."""
    server = make_server(workers=2, SSE_NOTIFY_RETRY="1000")
    paths = [server.stream_url(f"u{n}").removeprefix(server.url) for n in range(200)]
    browsers = [Subscriber(server.stream_url(f"b{n}"), reconnect=True) for n in range(3)]
    with LoadGen("127.0.0.1", server.port, paths, processes=2, reconnect=True, max_runtime=110) as gen:
        assert gen.wait_connected(30, 200) == 200
        wait_for(lambda: all(b.opened.is_set() for b in browsers), 10, "the httpx-sse streams to open")
        gen.collect(reset=True)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        sent = wait_for(lambda: _broadcast_when_up(server), 30, "a new worker to take the storm's notice")
        wait_for(lambda: gen.counters()["open"] >= 200, 30, "every client to come back")
        gen.wait_counter("events", 200, stall=10, limit=30)
        stats = gen.collect()
        counters = gen.counters()
    assert stats["notices"][sent["data"]["sent_at"]][0] == 200, "a stream missed the storm's notice"
    assert counters["duplicates"] == 0, "a stream got a notice it already had"
    assert counters["failed"] == 0, "a client was refused for good (a status other than 200)"
    for browser in browsers:
        assert browser.next("notice", timeout=15).id == str(sent["id"])
        browser.nothing(0.5)
        browser.close()


def _broadcast_when_up(server: Server) -> dict[str, t.Any] | None:
    try:
        return server.broadcast({"sent_at": time.time()})
    except (httpx.HTTPError, AssertionError):
        return None


def test_a_stopping_worker_offers_no_room() -> None:
    """A worker whose hub is stopping (a reload's old worker) writes capacity 0: no peer pauses for it."""
    table = Table(rows=2)
    mine, other = table.claim(), table.claim()
    assert mine is not None
    assert other is not None
    for row in (mine, other):
        table.own(row)
    going = Admission(table, mine)
    hub = Hub(max_streams=10)
    going.add(hub)
    assert table.peers(other) == [(0, 10)]
    hub.stopping = True
    going.tick()
    assert table.peers(other) == [], "a stopping worker still counted as having room"
