"""The per-process hub and its node: one feed, frames encoded once, bounded buffers, typed control records."""

from __future__ import annotations

import os
import statistics
import threading
import time
import typing as t
from pathlib import Path

import pytest

from sse_notify import streams as streams_module
from sse_notify.brokers import MemoryBroker, SQLiteBroker
from sse_notify.control import Control, Kind
from sse_notify.hub import Hub
from sse_notify.node import Node
from sse_notify.notices import dumps
from sse_notify.streams import QueuedStream, closing_frame

from .support import wait_for


@pytest.fixture(name="node")
def _node() -> t.Iterator[Node]:
    broker = MemoryBroker()
    node = Node(broker, Hub(max_pending=10_000))
    node.ensure_started()
    yield node
    node.shutdown()
    broker.close()


def open_streams(node: Node, *users: str) -> list[QueuedStream]:
    """One stream per user given, registered as a stream's generator registers it."""
    return [node.hub.connect(user) for user in users]


def test_one_feed_subscription_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many streams open, the node subscribes its hub to the store's feed once."""
    broker = MemoryBroker()
    node = Node(broker, Hub())
    calls: list[object] = []
    real = broker.subscribe
    monkeypatch.setattr(broker, "subscribe", lambda handler: (calls.append(handler), real(handler)))
    for i in range(50):
        node.ensure_started()
        node.hub.connect(f"user{i % 5}")
    assert calls == [node.hub]
    node.shutdown()


def test_a_notice_is_encoded_once_for_all_its_streams(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broadcast to 100 streams is encoded once: every stream holds the very same bytes object."""
    encoded: list[bytes] = []
    real = streams_module.encode_notice

    def counting(notice: t.Any) -> bytes:
        encoded.append(real(notice))
        return encoded[-1]

    monkeypatch.setattr("sse_notify.hub.encode_notice", counting)
    streams = open_streams(node, *(f"user{i}" for i in range(100)))
    node.broker.publish(None, dumps({"all": True}))
    assert len(encoded) == 1
    assert all(stream._frames[0][1] is encoded[0] for stream in streams)


def test_only_the_users_streams_get_a_notice(node: Node) -> None:
    """A notice for alice is queued on alice's streams only."""
    alice, bob = open_streams(node, "alice", "bob")
    node.broker.publish("alice", dumps({"n": 1}))
    assert alice.take(0) != b""
    assert bob.take(0) == b""


def test_one_large_round_never_evicts_a_client_that_keeps_up(node: Node) -> None:
    """A batch bigger than the buffer is delivered whole to a client that drains between rounds."""
    (stream,) = open_streams(node, "alice")
    node.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 50)  # ~60 KB > 10 KB
    assert not stream.closed
    taken = stream.take(0)
    assert taken is not None
    assert taken.count(b"event: notice") == 50
    node.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 50)
    assert not stream.closed


def test_a_client_that_falls_behind_is_evicted(node: Node) -> None:
    """A stream still holding more than its buffer from earlier rounds is closed and forgotten."""
    (stream,) = open_streams(node, "alice")
    node.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 20)
    node.broker.publish("alice", dumps({"n": "next round"}))
    assert stream.closed
    assert stream.close_reason == "slow consumer"
    assert stream.take(0) is None
    assert node.hub.stats() == {"streams": 0, "users": 0, "evicted": 1, "refused": 0}


def test_frames_already_replayed_are_skipped(node: Node) -> None:
    """Live frames at or below the stream's cursor (sent by the replay) are dropped, not repeated."""
    (stream,) = open_streams(node, "alice")
    first = node.broker.publish("alice", dumps({"n": 1}))
    second = node.broker.publish("alice", dumps({"n": 2}))
    stream.cursor = first.id
    data = stream.take(0)
    assert data is not None
    assert f"id: {second.id}\n".encode() in data
    assert f"id: {first.id}\n".encode() not in data


def test_kick_is_a_typed_control_record_for_one_user(node: Node) -> None:
    """A KICK record closes every stream of its user on this hub, and no other."""
    alice1, alice2, bob = open_streams(node, "alice", "alice", "bob")
    node.broker.publish_control(Control(Kind.KICK, "alice"))
    assert (alice1.close_reason, alice2.close_reason) == ("kicked", "kicked")
    assert not bob.closed
    assert node.hub.stats()["streams"] == 1


def test_a_state_change_reaches_the_users_streams_whatever_their_cursor(node: Node) -> None:
    """A STATE record is one event (no id) on the user's streams, even after a replay moved the cursor."""
    alice, bob = open_streams(node, "alice", "bob")
    alice.cursor = 10**6  # as a long replay leaves it
    node.broker.publish_control(Control(Kind.STATE, "alice", {"event": "read", "data": {"ids": [1]}}))
    assert alice.take(0) == b'event: read\ndata: {"ids":[1]}\n\n'
    assert bob.take(0) == b""


def test_resync_closes_every_stream(node: Node) -> None:
    """A RESYNC record (the feed lost notices) closes every stream so that each resumes by its cursor."""
    streams = open_streams(node, "alice", "bob")
    node.hub.handle_control(Control(Kind.RESYNC))
    assert [s.close_reason for s in streams] == ["resync", "resync"]


def test_every_kind_has_a_handler() -> None:
    """The hub acts on every kind of control record there is (a new kind needs its handler)."""
    hub = Hub()
    for kind in Kind:
        hub.handle_control(Control(kind, "nobody", {"event": "read", "data": {}}))


def test_control_records_survive_the_json_a_store_keeps() -> None:
    """A control record read back from its JSON is the same record; an unknown kind is refused."""
    record = Control(Kind.STATE, "alice", {"event": "read", "data": {"ids": [1, 2]}})
    assert Control.from_json(record.to_json()) == record
    with pytest.raises(ValueError, match="snooze"):
        Control.from_json('{"kind": "snooze", "user_id": null, "data": {}}')


def test_shutdown_closes_every_stream_and_refuses_new_ones(node: Node) -> None:
    """After shutdown every open stream is closed, and a new one is born closed."""
    streams = open_streams(node, "alice", "alice", "alice")
    node.shutdown()
    assert all(s.closed and s.close_reason == "shutdown" for s in streams)
    assert node.hub.connect("bob").closed


def test_idle_streams_do_not_query_the_store(tmp_path: Path) -> None:
    """50 idle streams cost no queries: only the feed's and the scheduler's polls and the presence write."""
    broker = SQLiteBroker(str(tmp_path / "n.sqlite3"), poll_interval=0.25)
    node = Node(broker, Hub())
    node.ensure_started()
    streams = open_streams(node, *(f"user{i}" for i in range(50)))
    statements: list[str] = []
    lock = threading.Lock()

    def trace(sql: str) -> None:
        with lock:
            statements.append(sql)

    broker._connection().set_trace_callback(trace)
    stop = threading.Event()

    def reader(stream: QueuedStream) -> None:  # each stream waits as its generator would
        while not stop.is_set():
            stream.take(0.05)

    threads = [threading.Thread(target=reader, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(2)
    node.shutdown()
    broker.close()
    # One feed poll each 0.25 s: about 4 in a second, whatever the number of streams;
    # and one presence write per interval (1 s), that the first streams made.
    # And the scheduler's poll (DueWork), about 4 a second too, whatever the number of streams.
    presence = [sql for sql in statements if "presence" in sql]
    scheduler = [sql for sql in statements if "scheduled" in sql]
    others = [
        sql
        for sql in statements
        if "presence" not in sql and "scheduled" not in sql and sql not in ("BEGIN IMMEDIATE", "COMMIT")
    ]
    assert 1 <= len(others) <= 8, others
    assert 1 <= len(scheduler) <= 8, scheduler
    assert 1 <= sum(sql.startswith("INSERT INTO presence_workers") for sql in presence) <= 2


def test_sqlite_feed_delivers_to_streams(tmp_path: Path) -> None:
    """A notice published through another SQLite broker (another worker) reaches this hub's stream."""
    here = SQLiteBroker(str(tmp_path / "n.sqlite3"), poll_interval=30)
    there = SQLiteBroker(str(tmp_path / "n.sqlite3"))
    node = Node(here, Hub())
    node.ensure_started()
    (stream,) = open_streams(node, "alice")
    sent = there.publish("alice", dumps({"n": 1}))
    data = wait_for(lambda: stream.take(0.1), 5, "the notice on the stream")
    assert f"id: {sent.id}\n".encode() in data
    node.shutdown()
    here.close()
    there.close()


#: A process with one app's node and one stream; SIGTERM after the lines given.
SIGNAL_SCRIPT = """
import os, signal, time
from sse_notify import shutdown
from sse_notify.brokers import MemoryBroker
from sse_notify.hub import Hub
from sse_notify.node import Node
node = Node(MemoryBroker(), Hub())
{before}
node.ensure_started(); stream = node.hub.connect("alice")
os.kill(os.getpid(), signal.SIGTERM)
deadline = time.monotonic() + {wait}
while not stream.closed and time.monotonic() < deadline: time.sleep(0.01)
{after}
"""


def run_signal_script(before: str, after: str, wait: float = 5) -> t.Any:
    """Run SIGNAL_SCRIPT in a fresh interpreter; it waits up to ``wait`` s for the stream to close."""
    import subprocess
    import sys

    code = SIGNAL_SCRIPT.format(before=before, after=after, wait=wait)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)


def test_sigterm_still_kills_a_process_without_a_server_handler() -> None:
    """Outside gunicorn (SIGTERM at its default) nothing is chained: the process still dies."""
    import signal

    done = run_signal_script("assert not shutdown.install()", "print('survived')")
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr


def test_sigterm_handler_of_a_server_is_extended() -> None:
    """Under a server that handles SIGTERM, installing closes the streams, then calls the server's handler."""
    done = run_signal_script(
        "seen = []\nsignal.signal(signal.SIGTERM, lambda s, f: seen.append(s))\nassert shutdown.install()",
        "print(stream.close_reason, seen == [signal.SIGTERM])",
    )
    assert done.stdout.split() == ["shutdown", "True"], done.stdout + done.stderr


def test_a_node_alone_touches_no_signal() -> None:
    """Building an app's node (as init_app does) leaves SIGTERM alone: only install() chains onto it."""
    done = run_signal_script(
        "handler = lambda s, f: print('server handler')\nsignal.signal(signal.SIGTERM, handler)",
        "print(stream.closed, signal.getsignal(signal.SIGTERM) is handler)",
        wait=0.5,  # the signal is handled at once: the stream would be closed by then
    )
    assert done.stdout.split() == ["server", "handler", "False", "True"], done.stdout + done.stderr


def test_sigterm_before_the_first_stream_is_not_missed() -> None:
    """A worker told to stop before its first stream opened refuses streams opened afterwards."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from sse_notify import shutdown\n"
        "from sse_notify.brokers import MemoryBroker\n"
        "from sse_notify.hub import Hub\n"
        "from sse_notify.node import Node\n"
        "signal.signal(signal.SIGTERM, lambda s, f: None)  # the server's own graceful handler\n"
        "node = Node(MemoryBroker(), Hub()); shutdown.install()  # as gunicorn_conf's hook does\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "node.ensure_started(); stream = node.hub.connect('alice')  # the node starts only now\n"
        "print(stream.closed, stream.close_reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["True", "shutdown"], done.stdout + done.stderr


def test_first_retry_is_spread_over_what_the_host_needs_to_take_its_streams_again() -> None:
    """first_retry: 0.5-1.5x retry on a quiet host; on a full one, spread from 0.5x over streams / rate."""
    hub = Hub(retry=2000, reconnect_rate=1000)
    quiet = [hub.first_retry() for _ in range(2000)]
    assert 1000 <= min(quiet) < 1100
    assert 2900 < max(quiet) <= 3000
    cores = os.cpu_count() or 1
    hub.host_streams = 100_000  # what the admission counted over the host's workers
    window_ms = 100_000 / (1000 * cores) * 1000
    busy = [hub.first_retry() for _ in range(2000)]
    assert 1000 <= min(busy) < 1000 + window_ms * 0.05
    assert 1000 + window_ms * 0.95 < max(busy) <= 1000 + window_ms
    assert statistics.median(busy) == pytest.approx(1000 + window_ms / 2, rel=0.1)


def test_expiries_close_each_stream_at_its_time_on_one_timer() -> None:
    """Expiries: each stream closes with 'token expired' at its own time; closed or moved ones are skipped."""
    hub = Hub()
    now = time.time()
    early, late, gone, moved = (hub.connect(user) for user in ("early", "late", "gone", "moved"))
    hub.expire_at(late, now + 0.6)
    hub.expire_at(early, now + 0.2)
    hub.expire_at(gone, now + 0.2)
    hub.expire_at(moved, now + 0.2)
    hub.disconnect(gone)  # the client left first
    hub.expire_at(moved, now + 5)  # a new token: the later time holds
    wait_for(lambda: early.closed, 2, "the early stream to expire")
    assert early.close_reason == "token expired"
    assert not late.closed
    assert gone.close_reason == "disconnected"
    wait_for(lambda: late.closed, 2, "the late stream to expire")
    assert late.close_reason == "token expired"
    assert not moved.closed
    hub.expiries.close()


def test_expiries_drop_the_entries_of_closed_streams() -> None:
    """Expiries: entries of closed streams neither pile up nor hold the streams."""
    hub = Hub(max_streams_per_user=1_000_000)
    far = time.time() + 3600
    stays = hub.connect("stays")
    hub.expire_at(stays, far + 1)
    for _ in range(5000):
        stream = hub.connect("churn")
        hub.expire_at(stream, far)
        hub.disconnect(stream)
    assert len(hub.expiries) <= 130, len(hub.expiries)
    hub.disconnect(stays)
    assert len(hub.expiries) == 0, "entries of closed streams were kept with no live one left"


def test_a_shutdown_spreads_its_retry_like_a_first_frame_and_other_reasons_do_not() -> None:
    """closing_frame: a shutdown's retry spreads over the host's window; a refusal keeps its 5 s floor."""
    retries = [_retry(closing_frame("shutdown", 2000, window=40.0)) for _ in range(2000)]
    assert 1000 <= min(retries) < 3000
    assert 35_000 < max(retries) <= 41_000
    refused = [_retry(closing_frame("overloaded", 2000, window=40.0)) for _ in range(500)]
    assert min(refused) >= 2500
    assert max(refused) <= 7500, "a refusal's retry followed the window"


def _retry(frame: bytes) -> int:
    return int(frame.split(b"retry: ")[1].split(b"\n")[0])


def test_the_reconnect_window_is_capped_whatever_the_rate() -> None:
    """reconnect_window: a rate set far too low never sends clients away for more than 5 minutes."""
    hub = Hub(retry=2000, reconnect_rate=1)
    hub.host_streams = 10_000_000
    assert hub.reconnect_window() == 300.0
    assert max(hub.first_retry() for _ in range(1000)) <= 1000 + 300_000
