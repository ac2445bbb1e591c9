"""The per-process hub: one feed, frames encoded once, bounded buffers, no polling per connection."""

from __future__ import annotations

import threading
import time
import typing as t
from pathlib import Path

import pytest

from sse_notify import hub as hub_module
from sse_notify.brokers import MemoryBroker, SQLiteBroker
from sse_notify.hub import Hub
from sse_notify.notices import dumps

from .support import wait_for


@pytest.fixture(name="memory_hub")
def _memory_hub() -> t.Iterator[Hub]:
    broker = MemoryBroker()
    yield Hub(broker, max_pending=10_000)
    broker.close()


def test_one_feed_subscription_per_process(memory_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many streams open, the hub subscribes to the store's feed once."""
    calls: list[object] = []
    real = memory_hub.broker.subscribe
    monkeypatch.setattr(memory_hub.broker, "subscribe", lambda cb: (calls.append(cb), real(cb)))
    conns = [memory_hub.connect(f"user{i % 5}") for i in range(50)]
    assert len(calls) == 1
    for conn in conns:
        memory_hub.disconnect(conn)


def test_a_notice_is_encoded_once_for_all_its_streams(
    memory_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broadcast to 100 streams is encoded once: every stream holds the very same bytes object."""
    encoded: list[bytes] = []
    real = hub_module.encode_notice

    def counting(notice: t.Any) -> bytes:
        encoded.append(real(notice))
        return encoded[-1]

    monkeypatch.setattr(hub_module, "encode_notice", counting)
    conns = [memory_hub.connect(f"user{i}") for i in range(100)]
    memory_hub.broker.publish(None, dumps({"all": True}))
    assert len(encoded) == 1
    assert all(conn._frames[0][1] is encoded[0] for conn in conns)


def test_only_the_users_streams_get_a_notice(memory_hub: Hub) -> None:
    """A notice for alice is queued on alice's streams only."""
    alice, bob = memory_hub.connect("alice"), memory_hub.connect("bob")
    memory_hub.broker.publish("alice", dumps({"n": 1}))
    assert alice.take(0) != b""
    assert bob.take(0) == b""


def test_one_large_round_never_evicts_a_client_that_keeps_up(memory_hub: Hub) -> None:
    """A batch bigger than the buffer is delivered whole to a client that drains between rounds."""
    conn = memory_hub.connect("alice")
    memory_hub.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 50)  # ~60 KB > 10 KB
    assert not conn.closed
    assert conn.take(0).count(b"event: notice") == 50
    memory_hub.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 50)
    assert not conn.closed


def test_a_client_that_falls_behind_is_evicted(memory_hub: Hub) -> None:
    """A stream still holding more than its buffer from earlier rounds is closed and forgotten."""
    conn = memory_hub.connect("alice")
    memory_hub.broker.publish_many([("alice", dumps({"pad": "x" * 1000}))] * 20)
    memory_hub.broker.publish("alice", dumps({"n": "next round"}))
    assert conn.closed
    assert conn.close_reason == "slow consumer"
    assert conn.take(0) is None
    assert memory_hub.stats() == {"streams": 0, "users": 0, "evicted": 1, "refused": 0}


def test_frames_already_replayed_are_skipped(memory_hub: Hub) -> None:
    """Live frames at or below the connection's cursor (sent by the replay) are dropped, not repeated."""
    conn = memory_hub.connect("alice")
    first = memory_hub.broker.publish("alice", dumps({"n": 1}))
    second = memory_hub.broker.publish("alice", dumps({"n": 2}))
    conn.cursor = first.id
    data = conn.take(0)
    assert data is not None
    assert f"id: {second.id}\n".encode() in data
    assert f"id: {first.id}\n".encode() not in data


def test_shutdown_closes_every_stream_and_refuses_new_ones(memory_hub: Hub) -> None:
    """After shutdown every open stream is closed, and a new one is born closed."""
    conns = [memory_hub.connect("alice") for _ in range(3)]
    memory_hub.shutdown()
    assert all(c.closed and c.close_reason == "shutdown" for c in conns)
    assert memory_hub.connect("bob").closed


def test_idle_streams_do_not_query_the_store(tmp_path: Path) -> None:
    """50 idle streams cost no queries: only the feed's safety poll and the presence write, per interval."""
    broker = SQLiteBroker(str(tmp_path / "n.sqlite3"), poll_interval=0.25)
    hub = Hub(broker)
    conns = [hub.connect(f"user{i}") for i in range(50)]
    statements: list[str] = []
    lock = threading.Lock()

    def trace(sql: str) -> None:
        with lock:
            statements.append(sql)

    broker._conn().set_trace_callback(trace)
    stop = threading.Event()

    def reader(conn: t.Any) -> None:  # each stream waits as its generator would
        while not stop.is_set():
            conn.take(0.05)

    threads = [threading.Thread(target=reader, args=(c,), daemon=True) for c in conns]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(2)
    broker.close()
    # One feed poll each 0.25 s: about 4 in a second, whatever the number of streams;
    # and one presence write per interval (1 s), that the first streams made.
    presence = [sql for sql in statements if "presence" in sql]
    others = [sql for sql in statements if "presence" not in sql and sql not in ("BEGIN IMMEDIATE", "COMMIT")]
    assert 1 <= len(others) <= 8, others
    assert 1 <= sum(sql.startswith("INSERT OR REPLACE INTO presence_workers") for sql in presence) <= 2


def test_sqlite_feed_delivers_to_streams(tmp_path: Path) -> None:
    """A notice published through another SQLite broker (another worker) reaches this hub's stream."""
    here = SQLiteBroker(str(tmp_path / "n.sqlite3"), poll_interval=30)
    there = SQLiteBroker(str(tmp_path / "n.sqlite3"))
    hub = Hub(here)
    conn = hub.connect("alice")
    sent = there.publish("alice", dumps({"n": 1}))
    data = wait_for(lambda: conn.take(0.1), 5, "the notice on the stream")
    assert f"id: {sent.id}\n".encode() in data
    here.close()
    there.close()


def test_sigterm_still_kills_a_process_without_a_server_handler(tmp_path: Path) -> None:
    """Outside gunicorn (SIGTERM at its default) the hub leaves SIGTERM alone: the process still dies."""
    import signal
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from sse_notify.brokers import MemoryBroker\n"
        "from sse_notify.hub import Hub\n"
        "hub = Hub(MemoryBroker()); hub.connect('alice')\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == -signal.SIGTERM, done.stdout + done.stderr


def test_sigterm_handler_of_a_server_is_extended(tmp_path: Path) -> None:
    """Under a server that handles SIGTERM, the hub closes its streams and then calls the server's handler."""
    import subprocess
    import sys

    code = (
        "import os, signal, time\n"
        "from sse_notify.brokers import MemoryBroker\n"
        "from sse_notify.hub import Hub\n"
        "seen = []\n"
        "signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))\n"
        "hub = Hub(MemoryBroker()); conn = hub.connect('alice')\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "deadline = time.monotonic() + 5\n"
        "while not conn.closed and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print(conn.close_reason, seen == [signal.SIGTERM])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["shutdown", "True"], done.stdout + done.stderr


def test_sigterm_before_the_first_stream_is_not_missed() -> None:
    """A worker told to stop before its first stream opened refuses streams opened afterwards."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from sse_notify.brokers import MemoryBroker\n"
        "from sse_notify.concurrency import gevent_active\n"
        "from sse_notify.hub import Hub\n"
        "signal.signal(signal.SIGTERM, lambda s, f: None)  # the server's own graceful handler\n"
        "hub = Hub(MemoryBroker()); hub.install_shutdown_signal()  # as init_app does\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "import time; time.sleep(0.2)\n"
        "conn = hub.connect('alice')  # the hub starts only now\n"
        "print(conn.closed, conn.close_reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["True", "shutdown"], done.stdout + done.stderr
