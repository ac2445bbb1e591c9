"""``sqlite://``: the contract on a real SQLite file, and its wake-ups in a private directory."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest

from sse_notify.brokers import Broker, Replay, SQLiteBroker
from sse_notify.brokers.wakeup import WakeChannel, _directories
from sse_notify.errors import BrokerError, BrokerUnavailable

from ..support import require_root
from .contract import DEADLINE, Feed, InboxDurableContract, MakeBroker, payload

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


class TestSQLiteBroker(InboxDurableContract):
    durable = True
    shared = True
    fast_feed: t.ClassVar[dict[str, t.Any]] = {"poll_interval": 0.05}

    @staticmethod
    def path(store_dir: Path) -> str:
        return str(store_dir / "notices.sqlite3")

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        return SQLiteBroker(self.path(store_dir), **options)

    def release(self, broker: Broker) -> None:
        broker.close()

    def cleanup(self, store_dir: Path) -> None:
        with contextlib.suppress(OSError):  # left in place if a socket is still in it
            os.rmdir(WakeChannel(self.path(store_dir)).directory)

    @pytest.mark.parametrize(
        ("bad_data", "why"),
        [(None, "NOT NULL constraint"), ({"a": 1}, "not supported")],
        ids=["null", "unbindable"],
    )
    def test_publish_many_rolls_back_a_failed_insert(
        self, make_broker: MakeBroker, bad_data: object, why: str
    ) -> None:
        """When the second INSERT of a batch fails, the first is rolled back and nothing is announced."""
        broker = make_broker()
        kept = broker.publish("alice", payload(0))
        head = broker.head()
        feed = Feed()
        broker.subscribe(feed)
        batch: list[t.Any] = [("alice", payload(1)), ("bob", bad_data), (None, payload(3))]

        with pytest.raises(BrokerError, match=why):
            broker.publish_many(batch)

        assert broker.head() == head
        assert broker.replay("alice", "0") == Replay([kept], 0, None)
        assert broker.replay("bob", "0") == Replay([], 0, None)
        later = broker.publish("alice", payload(4))
        assert later.id == head + 1  # the rolled-back rows did not use up cursors
        assert feed.wait_through(later) == [later]
        broker.ping()  # the connection is usable: no transaction left open

    def test_many_brokers_opening_a_new_file_at_once(self, make_broker: MakeBroker) -> None:
        """Workers that open a new store file at the same moment all get in (none sees 'locked')."""
        brokers_ = [make_broker() for _ in range(8)]
        errors: list[BaseException] = []
        start = threading.Barrier(len(brokers_))

        def work(broker: Broker) -> None:
            try:
                start.wait(DEADLINE)
                broker.publish("alice", payload(1))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(b,)) for b in brokers_]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE * 2)
        assert not errors
        assert len(brokers_[0].replay("alice", "0").notices) == len(brokers_)

    def test_another_instance_wakes_the_feed(self, make_broker: MakeBroker) -> None:
        """A notice published through broker A reaches broker B's feed (another "worker") at once."""
        publisher = make_broker()
        subscriber = make_broker(poll_interval=30)  # only a wake-up can deliver in time
        feed = Feed()
        subscriber.subscribe(feed)

        started = time.monotonic()
        notices = [publisher.publish("alice", payload(1)), publisher.publish(None, payload(2))]
        assert feed.wait_through(notices[-1]) == notices
        assert feed.arrival_of(notices[-1]) - started < 1.0

    def test_another_process_wakes_the_feed(self, make_broker: MakeBroker, tmp_path: Path) -> None:
        """A notice published by a separate process reaches this process's feed well under 1 s."""
        subscriber = make_broker(poll_interval=30)  # only a wake-up can deliver in time
        feed = Feed()
        subscriber.subscribe(feed)
        child = (
            "import sys, time\n"
            "from sse_notify.brokers import SQLiteBroker\n"
            "broker = SQLiteBroker(sys.argv[1])\n"
            "started = time.monotonic()\n"
            "notice = broker.publish('alice', '{\"from\":\"child\"}')\n"
            "broker.close()\n"
            "print(notice.id, started)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", child, self.path(tmp_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        notice_id, started = done.stdout.split()

        (got,) = feed.wait_count(1)
        assert (got.id, got.user_id, got.data) == (int(notice_id), "alice", {"from": "child"})
        # CLOCK_MONOTONIC is one clock for the whole host, so the child's reading compares.
        assert feed.arrival_of(got) - float(started) < 1.0

    def test_ping_unreachable_store(self, tmp_path: Path) -> None:
        """ping raises BrokerUnavailable when the file cannot be opened."""
        (tmp_path / "a-directory.sqlite3").mkdir()
        broker = SQLiteBroker(str(tmp_path / "a-directory.sqlite3"))
        try:
            with pytest.raises(BrokerUnavailable, match="a-directory"):
                broker.ping()
        finally:
            broker.close()


# -- the wake-up channel --------------------------------------------------


@pytest.mark.parametrize("how", ["closed", "killed"])
def test_wake_all_removes_stale_sockets(tmp_path: Path, how: str) -> None:
    """wake_all removes a socket file nobody listens on, and still wakes the live listener."""
    key = str(tmp_path / "notices.sqlite3")
    live = WakeChannel(key)
    publisher = WakeChannel(key)
    live.listen()
    try:
        stale = os.path.join(live.directory, "stale.sock")
        if how == "closed":  # bound, then closed without unlinking its file
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(stale)
            sock.close()
        else:  # a process killed with SIGKILL while listening
            child = (
                "import os, signal, sys\n"
                "from sse_notify.brokers.wakeup import WakeChannel\n"
                "WakeChannel(sys.argv[1]).listen()\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n"
            )
            done = subprocess.run(
                [sys.executable, "-c", child, key],
                cwd=REPO_ROOT,
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == -signal.SIGKILL, done.stderr
            (name,) = set(os.listdir(live.directory)) - {os.path.basename(live._path or "")}
            stale = os.path.join(live.directory, name)
        assert os.path.exists(stale)

        publisher.wake_all()

        assert not os.path.exists(stale)
        assert len(os.listdir(live.directory)) == 1  # the live socket stays
        assert live.wait(DEADLINE)
    finally:
        live.close()
        publisher.close()
        with contextlib.suppress(OSError):
            os.rmdir(live.directory)


def test_wait_survives_close_from_another_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wait() returns False, never raises, when close() lands just as it starts waiting."""
    channel = WakeChannel(str(tmp_path / "notices.sqlite3"))
    channel.listen()
    waiter = threading.get_ident()
    real_settimeout = socket.socket.settimeout

    def closed_meanwhile(sock: socket.socket, value: float | None) -> None:
        # Replays the interleaving deterministically: another thread's close()
        # runs after wait() read its socket and before it arms the timeout.
        if threading.get_ident() == waiter:
            channel.close()
        real_settimeout(sock, value)

    monkeypatch.setattr(socket.socket, "settimeout", closed_meanwhile)
    try:
        assert channel.wait(0.1) is False
    finally:
        monkeypatch.undo()
        channel.close()
        with contextlib.suppress(OSError):
            os.rmdir(channel.directory)


def test_wake_all_without_listeners(tmp_path: Path) -> None:
    """wake_all with nobody listening sends nothing and opens no socket."""
    channel = WakeChannel(str(tmp_path / "never-listened.sqlite3"))
    try:
        channel.wake_all()
        assert channel._sender is None
        assert channel.directory is not None
        assert os.listdir(channel.directory) == []
    finally:
        channel.close()
        with contextlib.suppress(OSError):
            os.rmdir(t.cast(str, channel.directory))


# -- the wake-up directory is private ---------------------------------------


def test_the_wake_up_directory_is_private(tmp_path: Path) -> None:
    """The directory is made 0700 for this user, and one of this user's left open to others is closed."""
    key = str(tmp_path / "notices.sqlite3")
    first = _directories(key)[0]
    try:
        channel = WakeChannel(key)
        assert channel.directory == first
        info = os.lstat(first)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o700)
        os.chmod(first, 0o777)
        assert WakeChannel(key).directory == first
        assert stat.S_IMODE(os.lstat(first).st_mode) == 0o700
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(first)


@pytest.mark.parametrize("trap", ["another user's", "a symbolic link"])
def test_a_wake_up_directory_not_ours_is_refused_and_said(
    tmp_path: Path, trap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory another user made (or a link) is not used: the log says so, a private one serves."""
    key = str(tmp_path / "notices.sqlite3")
    first, fallback = _directories(key)
    if trap == "another user's":
        if os.geteuid() != 0:
            require_root("only root can make a directory that another user owns")
        os.mkdir(first, 0o777)
        os.chown(first, 65534, 65534)  # nobody
    else:
        (tmp_path / "elsewhere").mkdir()
        os.symlink(tmp_path / "elsewhere", first)
    listener, publisher = WakeChannel(key), WakeChannel(key)
    try:
        with caplog.at_level(logging.ERROR, logger="sse_notify.brokers.wakeup"):
            listener.listen()
        assert listener.directory == fallback
        assert first in caplog.text
        assert ("owned by uid 65534" if trap == "another user's" else "symbolic link") in caplog.text
        assert f"Using {fallback} instead" in caplog.text
        assert stat.S_IMODE(os.lstat(fallback).st_mode) == 0o700
        assert os.listdir(first) == []  # no socket of ours went there
        publisher.wake_all()
        assert listener.wait(DEADLINE)
    finally:
        listener.close()
        publisher.close()
        if os.path.islink(first):
            os.unlink(first)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(first)


def test_a_hijacked_wake_up_directory_still_delivers_across_processes(tmp_path: Path) -> None:
    """With the usual directory taken by another user, a notice from another process still wakes the feed."""
    if os.geteuid() != 0:
        require_root("only root can make a directory that another user owns")
    path = str(tmp_path / "notices.sqlite3")
    first = _directories(path)[0]
    os.mkdir(first, 0o777)
    os.chown(first, 65534, 65534)
    try:
        subscriber = SQLiteBroker(path, poll_interval=30)  # only a wake-up can deliver in time
        feed = Feed()
        subscriber.subscribe(feed)
        child = (
            "import sys\n"
            "from sse_notify.brokers import SQLiteBroker\n"
            "broker = SQLiteBroker(sys.argv[1]); print(broker.publish('alice', '{}').id); broker.close()\n"
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", child, path], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "owned by uid 65534" in done.stderr  # the publisher said so too
        (got,) = feed.wait_count(1)
        assert got.id == int(done.stdout)
        assert feed.arrival_of(got) - started < 5.0
        assert os.listdir(first) == []
        subscriber.close()
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(first)


def test_a_store_of_the_previous_version_gains_the_snooze_column(tmp_path: Path) -> None:
    """A store made before snoozing (inbox_marks without `snoozed`) is upgraded at open, marks kept."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE notices (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
                              created_at TEXT NOT NULL, data TEXT NOT NULL);
        CREATE TABLE inbox_marks (user_id TEXT NOT NULL, seq INTEGER NOT NULL, read INTEGER,
                                  archived INTEGER NOT NULL DEFAULT 0,
                                  PRIMARY KEY (user_id, seq)) WITHOUT ROWID;
        INSERT INTO notices (user_id, created_at, data)
            VALUES ('alice', '2026-12-01T00:00:00.000Z', '{"n":1}');
        INSERT INTO inbox_marks VALUES ('alice', 1, 1, 0);
        """
    )
    db.close()
    brokers = [SQLiteBroker(str(path)) for _ in range(2)]  # two workers opening it at once
    try:
        for broker in brokers:
            assert broker.inbox_state("alice").is_read(1)
        brokers[0].snooze("alice", 1, 2_000_000_000.0)
        assert brokers[1].inbox_state("alice").snoozed == {1: 2_000_000_000.0}
    finally:
        for broker in brokers:
            broker.close()
