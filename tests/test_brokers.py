"""The store contract: one suite, run against every backend.

:class:`BrokerContract` holds every test that any store must pass. Each backend
gets a subclass that says how to build it (:meth:`BrokerContract.create`) and
what it promises (``durable``, ``shared``, ``fast_feed``); nothing else in the
base knows which backend it is testing. A Redis store will be one more
subclass.

Tests run without gevent's monkey-patching, so a backend's feed may call back
from a real thread: every wait for a delivery has a deadline (:class:`Feed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sse_notify import brokers
from sse_notify.brokers import Broker, MemoryBroker, Replay, SQLiteBroker
from sse_notify.brokers.redis import RedisBroker
from sse_notify.brokers.wakeup import WakeChannel
from sse_notify.errors import BrokerError, BrokerUnavailable, ConfigError, IdempotencyKeyReused
from sse_notify.inbox import NoticeNotFound, change, list_page, read_all, snapshot
from sse_notify.notices import Notice, dumps

from .support import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The longest a test waits for something that should take milliseconds.
DEADLINE = 5.0

MakeBroker = Callable[..., Broker]


def payload(n: int, **extra: t.Any) -> str:
    """A small JSON object as a publisher would send it."""
    return dumps({"n": n, **extra})


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class Feed:
    """A feed callback that records its batches and lets a test wait for them."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.batches: list[list[Notice]] = []
        self.received_at: list[float] = []
        self._fail_next = fail_first
        self._cond = threading.Condition()

    def __call__(self, notices: Sequence[Notice]) -> None:
        with self._cond:
            self.batches.append(list(notices))
            self.received_at.append(time.monotonic())
            fail, self._fail_next = self._fail_next, False
            self._cond.notify_all()
        if fail:
            raise RuntimeError("this feed callback fails on purpose")

    @property
    def notices(self) -> list[Notice]:
        with self._cond:
            return [notice for batch in self.batches for notice in batch]

    def _wait(self, done: Callable[[list[Notice]], bool], what: str, timeout: float) -> list[Notice]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [notice for batch in self.batches for notice in batch]
                if done(got):
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"feed did not get {what} within {timeout} s; got ids {[n.id for n in got]}")
                self._cond.wait(remaining)

    def wait_count(self, count: int, timeout: float = DEADLINE) -> list[Notice]:
        """Wait until at least ``count`` notices arrived; return all of them."""
        return self._wait(lambda got: len(got) >= count, f"{count} notices", timeout)

    def wait_through(self, notice: Notice, timeout: float = DEADLINE) -> list[Notice]:
        """Wait until ``notice`` (or a later one) arrived; return everything so far."""
        return self._wait(lambda got: any(n.id >= notice.id for n in got), f"notice {notice.id}", timeout)

    def arrival_of(self, notice: Notice) -> float:
        """When the batch holding ``notice`` arrived (``time.monotonic()``)."""
        with self._cond:
            for batch, at in zip(self.batches, self.received_at, strict=True):
                if any(n.id == notice.id for n in batch):
                    return at
        raise AssertionError(f"notice {notice.id} never arrived")


class BrokerContract:
    """What every store must do. Subclasses: ``create`` and the class attributes."""

    #: Whether notices survive closing every broker on the store (``Broker.durable``).
    durable: t.ClassVar[bool]
    #: Whether two brokers made in one test share one store (as gunicorn workers do).
    shared: t.ClassVar[bool]
    #: Options that make this backend's feed notice new rows quickly even without
    #: a wake-up (used where a test must show that something was *not* delivered).
    fast_feed: t.ClassVar[dict[str, t.Any]] = {}

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        """A new broker; every call in one test uses the same store if ``shared``."""
        raise NotImplementedError

    def release(self, broker: Broker) -> None:
        """Undo :meth:`create` (teardown)."""
        broker.close()

    def cleanup(self, store_dir: Path) -> None:
        """Remove whatever the store left outside ``store_dir`` (teardown)."""

    @pytest.fixture(name="make_broker")
    def _make_broker(self, tmp_path: Path) -> Iterator[MakeBroker]:
        made: list[Broker] = []

        def make(**options: t.Any) -> Broker:
            broker = self.create(tmp_path, **options)
            made.append(broker)
            return broker

        yield make
        for broker in reversed(made):
            self.release(broker)
        self.cleanup(tmp_path)

    @pytest.fixture(name="broker")
    def _broker(self, make_broker: MakeBroker) -> Broker:
        return make_broker()

    # -- publish ----------------------------------------------------------

    def test_declares_durability(self, broker: Broker) -> None:
        """The backend's ``durable`` flag is what this suite expects of it."""
        assert broker.durable is self.durable

    def test_publish_returns_the_stored_notice(self, broker: Broker) -> None:
        """publish returns a Notice with a growing id, the user, a UTC ISO time and the data."""
        before = datetime.now(timezone.utc)
        data = dumps({"text": 'héllo ✓ "quoted"', "nested": {"list": [1, 2.5, None, True]}})
        first = broker.publish("alice", data)
        second = broker.publish("bob", payload(2))
        after = datetime.now(timezone.utc)

        assert isinstance(first, Notice)
        assert first.id > 0
        assert second.id > first.id
        assert (first.user_id, second.user_id) == ("alice", "bob")
        assert first.data_json == data
        assert first.data == {"text": 'héllo ✓ "quoted"', "nested": {"list": [1, 2.5, None, True]}}
        assert first.created_at.endswith("Z")
        assert len(first.created_at) == len("2026-01-01T00:00:00.000Z")
        moment = datetime.fromisoformat(first.created_at.replace("Z", "+00:00"))
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= moment <= after

    def test_publish_broadcast(self, broker: Broker) -> None:
        """A broadcast (user_id None) is stored, returned and replayed with user_id None."""
        own = broker.publish("alice", payload(1))
        shout = broker.publish(None, payload(2, all=True))

        assert shout.user_id is None
        assert shout.is_broadcast
        assert shout.id > own.id
        assert shout.data == {"n": 2, "all": True}
        assert broker.replay("alice", "0").notices == [own, shout]

    def test_publish_many_in_order(self, broker: Broker) -> None:
        """publish_many stores every item, in order, with consecutive increasing ids."""
        broker.publish("carol", payload(0))
        items: list[tuple[str | None, str]] = [("alice", payload(1)), (None, payload(2)), ("bob", payload(3))]
        notices = broker.publish_many(items)

        assert [(n.user_id, n.data_json) for n in notices] == items
        ids = [n.id for n in notices]
        assert ids == list(range(ids[0], ids[0] + len(items)))
        assert broker.head() == ids[-1]
        assert broker.replay("alice", "0").notices == notices[:2]
        assert broker.replay("bob", "0").notices == notices[1:]

    def test_publish_many_empty(self, broker: Broker) -> None:
        """An empty publish_many returns [] and stores nothing."""
        broker.publish("alice", payload(1))
        head = broker.head()

        assert broker.publish_many([]) == []
        assert broker.head() == head
        assert broker.replay("alice", str(head)) == Replay([], head, None)

    def test_empty_batch_is_not_announced(self, broker: Broker) -> None:
        """An empty publish_many hands the feed no (empty) batch."""
        feed = Feed()
        broker.subscribe(feed)
        broker.publish_many([])
        sentinel = broker.publish("alice", payload(1))

        feed.wait_through(sentinel)
        assert feed.batches == [[sentinel]]

    def test_publish_many_failing_part_way_stores_nothing(self, broker: Broker) -> None:
        """A batch that fails on its second item raises and stores (and announces) none of it."""
        kept = broker.publish("alice", payload(0))
        head = broker.head()
        feed = Feed()
        broker.subscribe(feed)
        batch: list[t.Any] = [("alice", payload(1)), ("bob",), ("carol", payload(3))]  # not a pair

        with pytest.raises((ValueError, TypeError, BrokerError)):
            broker.publish_many(batch)

        assert broker.head() == head
        assert broker.replay("alice", "0").notices == [kept]
        assert broker.replay("bob", "0").notices == []
        later = broker.publish("alice", payload(4))
        assert later.id > head
        assert feed.wait_through(later) == [later]

    # -- presence -------------------------------------------------------------

    def test_presence_sums_live_workers(self, make_broker: MakeBroker) -> None:
        """Counts of several workers (on one store) add up per user; users with none are left out."""
        one = make_broker()
        other = make_broker() if self.shared else one
        one.presence_update("host-a:1", {"alice": 2, "bob": 1}, 30)
        other.presence_update("host-b:7", {"alice": 1}, 30)
        assert one.presence_counts(["alice", "bob", "carol", "alice"]) == {"alice": 3, "bob": 1}
        assert other.presence_counts([]) == {}

    def test_presence_updates_only_the_users_given(self, broker: Broker) -> None:
        """An update changes the named users' counts (0 removes) and keeps the others."""
        broker.presence_update("w1", {"alice": 2, "bob": 1}, 30)
        broker.presence_update("w1", {"alice": 0}, 30)
        assert broker.presence_counts(["alice", "bob"]) == {"bob": 1}

    def test_presence_forgets_a_worker_that_left_or_went_quiet(self, broker: Broker) -> None:
        """A worker that leaves is forgotten at once; one that stops renewing, after its lifetime."""
        broker.presence_update("leaving", {"alice": 1}, 30)
        broker.presence_update("killed", {"alice": 1}, 0.3)
        broker.presence_update("alive", {"bob": 1}, 30)
        broker.presence_leave("leaving")
        assert broker.presence_counts(["alice", "bob"]) == {"alice": 1, "bob": 1}
        time.sleep(0.4)
        assert broker.presence_counts(["alice", "bob"]) == {"bob": 1}
        broker.presence_update("alive", {}, 30)  # a renewal alone keeps the counts
        assert broker.presence_counts(["bob"]) == {"bob": 1}

    # -- publish once (idempotency keys) --------------------------------------

    def test_publish_once_stores_once_and_returns_the_first_notices(self, broker: Broker) -> None:
        """A key sent again with the same request stores nothing and returns the first call's notices."""
        feed = Feed()
        broker.subscribe(feed)
        items: list[tuple[str | None, str]] = [("alice", payload(1)), (None, payload(2))]
        first = broker.publish_once(items, "job-1", "fp", 60)
        head = broker.head()
        again = broker.publish_once(items, "job-1", "fp", 60)

        assert first.replayed is False
        assert again.replayed is True
        assert again.notices == first.notices
        assert broker.head() == head
        assert broker.replay("alice", "0").notices == first.notices
        sentinel = broker.publish("alice", payload(3))
        assert feed.wait_through(sentinel) == [*first.notices, sentinel]  # announced once

    def test_publish_once_refuses_a_key_reused_for_another_request(self, broker: Broker) -> None:
        """The same key with another fingerprint raises IdempotencyKeyReused and stores nothing."""
        broker.publish_once([("alice", payload(1))], "k", "fp-1", 60)
        head = broker.head()
        with pytest.raises(IdempotencyKeyReused, match="'k'"):
            broker.publish_once([("alice", payload(2))], "k", "fp-2", 60)
        assert broker.head() == head

    def test_publish_once_keys_are_independent_and_expire(self, broker: Broker) -> None:
        """Different keys store separately; after the key's lifetime the same key stores again."""
        a = broker.publish_once([("alice", payload(1))], "a", "fp", 0.3)
        b = broker.publish_once([("alice", payload(1))], "b", "fp", 60)
        assert a.notices[0].id != b.notices[0].id
        time.sleep(0.4)
        broker.trim_expired()
        again = broker.publish_once([("alice", payload(1))], "a", "fp", 60)
        assert again.replayed is False
        assert again.notices[0].id > b.notices[0].id

    def test_publish_once_concurrently_stores_exactly_once(self, make_broker: MakeBroker) -> None:
        """Concurrent calls with one key (from one or several processes' brokers) store one notice."""
        brokers_ = [make_broker(), make_broker()] if self.shared else [make_broker()]
        results: list[t.Any] = []
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                results.append(
                    brokers_[index % len(brokers_)].publish_once([("alice", payload(7))], "race", "fp", 60)
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert not errors
        assert sorted(r.replayed for r in results) == [False] + [True] * 5
        assert len({r.notices[0].id for r in results}) == 1
        assert len(brokers_[0].replay("alice", "0").notices) == 1

    # -- replay -----------------------------------------------------------

    def test_replay_own_and_broadcast_in_order_once(self, broker: Broker) -> None:
        """replay returns the user's and broadcast notices after the cursor, in id order, once each."""
        a1 = broker.publish("alice", payload(1))
        b1 = broker.publish("bob", payload(2))
        s1 = broker.publish(None, payload(3))
        a2, b2, s2 = broker.publish_many([("alice", payload(4)), ("bob", payload(5)), (None, payload(6))])
        a3 = broker.publish("alice", payload(7))

        assert broker.replay("alice", "0") == Replay([a1, s1, a2, s2, a3], 0, None)
        assert broker.replay("bob", "0") == Replay([b1, s1, b2, s2], 0, None)
        assert broker.replay("alice", str(s1.id)) == Replay([a2, s2, a3], s1.id, None)
        # A cursor may be any id the store issued, even another user's.
        assert broker.replay("alice", str(b2.id)) == Replay([s2, a3], b2.id, None)
        assert broker.replay("nobody", "0") == Replay([s1, s2], 0, None)

    def test_replay_at_head_returns_nothing(self, broker: Broker) -> None:
        """A cursor equal to head replays nothing and needs no reset."""
        broker.publish("alice", payload(1))
        broker.publish(None, payload(2))
        head = broker.head()

        assert broker.replay("alice", str(head)) == Replay([], head, None)

    def test_replay_on_empty_store(self, broker: Broker) -> None:
        """On an empty store, cursor 0 replays nothing and needs no reset."""
        assert broker.replay("alice", "0") == Replay([], 0, None)

    @pytest.mark.parametrize(
        "last_event_id",
        ["abc", "", " ", "-1", "1.5", "+2", "0x1", "1e3", "٣", "9" * 19, "1" * 25, "{head_plus_1}"],
    )
    def test_replay_unknown_cursor(self, broker: Broker, last_event_id: str) -> None:
        """A cursor the store never issued resets as "unknown" to head, with no notices."""
        broker.publish("alice", payload(1))
        broker.publish(None, payload(2))
        head = broker.head()
        last_event_id = last_event_id.replace("{head_plus_1}", str(head + 1))

        assert broker.replay("alice", last_event_id) == Replay([], head, "unknown")

    def test_replay_expired_cursor_after_count_retention(self, make_broker: MakeBroker) -> None:
        """A cursor older than what retention dropped resets as "expired" to the floor; the rest follows."""
        broker = make_broker(retention_count=3)
        alice = [broker.publish("alice", payload(i)) for i in range(5)]
        floor = alice[1].id  # the newest of alice's dropped notices

        for cursor in ("0", str(alice[0].id), str(floor - 1)):
            assert broker.replay("alice", cursor) == Replay(alice[2:], floor, "expired")
        assert broker.replay("alice", str(floor)) == Replay(alice[2:], floor, None)
        assert broker.replay("alice", str(alice[2].id)) == Replay(alice[3:], alice[2].id, None)

    def test_broadcast_retention_counts_separately(self, make_broker: MakeBroker) -> None:
        """Broadcasts have their own retention count, and trimming them moves every user's floor."""
        broker = make_broker(retention_count=3)
        shouts = [broker.publish(None, payload(i)) for i in range(3)]
        own = [broker.publish("alice", payload(10 + i)) for i in range(3)]
        # Three of each: neither key is over its count, nothing is dropped.
        assert broker.replay("alice", "0") == Replay([*shouts, *own], 0, None)

        shouts += [broker.publish(None, payload(20 + i)) for i in range(2)]
        floor = shouts[1].id  # the newest broadcast dropped
        assert broker.replay("alice", "0") == Replay([shouts[2], *own, *shouts[3:]], floor, "expired")
        assert broker.replay("bob", "0") == Replay(shouts[2:], floor, "expired")
        assert broker.replay("bob", str(floor)) == Replay(shouts[2:], floor, None)
        assert broker.replay("alice", str(floor)) == Replay([shouts[2], *own, *shouts[3:]], floor, None)

    # -- retention --------------------------------------------------------

    def test_retention_by_count_per_user(self, make_broker: MakeBroker) -> None:
        """Only a user's newest retention_count notices remain; other users are untouched."""
        broker = make_broker(retention_count=3)
        alice: list[Notice] = []
        bob: list[Notice] = []
        for i in range(7):
            alice.append(broker.publish("alice", payload(i)))
            if i % 3 == 0:
                bob.append(broker.publish("bob", payload(100 + i)))
        alice += broker.publish_many([("alice", payload(50)), ("alice", payload(51))])

        replay = broker.replay("alice", "0")
        assert replay.reset == "expired"
        assert replay.notices == alice[-3:]
        assert replay.cursor == alice[-4].id
        assert broker.replay("bob", "0") == Replay(bob, 0, None)

    def test_retention_by_age(self, make_broker: MakeBroker) -> None:
        """trim_expired drops notices older than retention_age, counts them, and moves the floor."""
        broker = make_broker(retention_age=0.3)
        assert broker.trim_expired() == 0
        old_own = broker.publish("alice", payload(1))
        old_shout = broker.publish(None, payload(2))
        time.sleep(0.45)
        fresh = broker.publish("alice", payload(3))

        assert broker.trim_expired() == 2
        assert broker.replay("alice", "0") == Replay([fresh], old_shout.id, "expired")
        assert broker.replay("alice", str(old_own.id)) == Replay([fresh], old_shout.id, "expired")
        assert broker.replay("alice", str(old_shout.id)) == Replay([fresh], old_shout.id, None)
        assert broker.trim_expired() == 0

    # -- inbox ------------------------------------------------------------

    @staticmethod
    def _listed(broker: Broker, user: str, **filters: t.Any) -> list[tuple[int, bool, bool]]:
        page = list_page(broker, user, **filters)
        return [(item.notice.id, item.read, item.archived) for item in page.items]

    def test_inbox_lists_own_and_broadcasts_newest_first(self, broker: Broker) -> None:
        """The inbox holds the user's notices and the broadcasts, newest first, all unread at first."""
        a1 = broker.publish("alice", payload(1))
        broker.publish("bob", payload(2))
        shout = broker.publish(None, payload(3))
        a2 = broker.publish("alice", payload(4))
        page = list_page(broker, "alice")
        assert [item.notice for item in page.items] == [a2, shout, a1]
        assert [(item.read, item.archived) for item in page.items] == [(False, False)] * 3
        assert (page.unread, page.next) == (3, None)
        assert list_page(broker, "carol").unread == 1  # the broadcast only

    def test_inbox_marks_read_unread_archive(self, broker: Broker) -> None:
        """Marks set the read and archived flags and the unread count; archived ones are listed apart."""
        a1, a2, a3 = (broker.publish("alice", payload(i)) for i in range(3))
        done = change(broker, "alice", [a1.id, a3.id], read=True)
        assert (done.event, done.ids, done.value, done.unread) == ("read", [a1.id, a3.id], True, 1)
        assert self._listed(broker, "alice") == [
            (a3.id, True, False),
            (a2.id, False, False),
            (a1.id, True, False),
        ]

        assert change(broker, "alice", [a3.id], read=False).unread == 2
        done = change(broker, "alice", [a2.id], archived=True)
        assert (done.event, done.value, done.unread) == ("archive", True, 1)  # archived is not counted
        assert self._listed(broker, "alice") == [(a3.id, False, False), (a1.id, True, False)]
        assert self._listed(broker, "alice", archived=True) == [(a2.id, False, True)]
        assert change(broker, "alice", [a2.id], archived=False).unread == 2
        assert self._listed(broker, "alice", unread_only=True) == [
            (a3.id, False, False),
            (a2.id, False, False),
        ]

    def test_inbox_read_all_then_new_and_unread_marks(self, broker: Broker) -> None:
        """read-all marks everything read; later notices are unread; one can be marked unread after it."""
        old = [broker.publish("alice", payload(i)) for i in range(3)] + [broker.publish(None, payload(9))]
        change(broker, "alice", [old[0].id], read=False)
        done = read_all(broker, "alice")
        assert (done.through, done.unread, done.value) == (old[-1].id, 0, True)
        assert all(read for _, read, _ in self._listed(broker, "alice"))

        new = broker.publish("alice", payload(5))
        assert list_page(broker, "alice").unread == 1
        assert change(broker, "alice", [old[1].id], read=False).unread == 2
        assert self._listed(broker, "alice", unread_only=True) == [
            (new.id, False, False),
            (old[1].id, False, False),
        ]
        assert read_all(broker, "alice").unread == 0

    def test_inbox_marks_are_per_user_even_for_broadcasts(self, broker: Broker) -> None:
        """A broadcast one user read or archived is still unread for everyone else."""
        shout = broker.publish(None, payload(1))
        change(broker, "alice", [shout.id], read=True)
        change(broker, "alice", [shout.id], archived=True)
        read_all(broker, "carol")
        assert self._listed(broker, "bob") == [(shout.id, False, False)]
        assert list_page(broker, "bob").unread == 1
        assert self._listed(broker, "alice", archived=True) == [(shout.id, True, True)]

    def test_inbox_pages_with_before_and_next(self, broker: Broker) -> None:
        """Pages of ``limit`` follow each other with ``next`` as ``before``, and the last says no more."""
        ids = [n.id for n in broker.publish_many([("alice", payload(i)) for i in range(7)])]
        newest_first = ids[::-1]
        seen: list[int] = []
        before = None
        while True:
            page = list_page(broker, "alice", before=before, limit=3)
            seen += [item.notice.id for item in page.items]
            assert page.unread == 7
            if page.next is None:
                break
            before = page.next
        assert seen == newest_first
        assert [i.notice.id for i in list_page(broker, "alice", before=ids[2]).items] == ids[1::-1]

    def test_inbox_refuses_notices_not_in_the_inbox(self, broker: Broker) -> None:
        """Marking another user's notice, or an id never issued, is NoticeNotFound; nothing changes."""
        bobs = broker.publish("bob", payload(1))
        mine = broker.publish("alice", payload(2))
        for ids in ([bobs.id], [mine.id, 999_999]):
            with pytest.raises(NoticeNotFound, match="not in alice's inbox"):
                change(broker, "alice", ids, read=True)
        assert self._listed(broker, "alice") == [(mine.id, False, False)]

    def test_inbox_forgets_marks_of_trimmed_notices(self, make_broker: MakeBroker) -> None:
        """Notices dropped by retention leave the inbox and its count, with their marks."""
        broker = make_broker(retention_count=2)
        first = broker.publish("alice", payload(1))
        change(broker, "alice", [first.id], archived=True)
        kept = [broker.publish("alice", payload(i)) for i in range(2)]
        assert self._listed(broker, "alice") == [(kept[1].id, False, False), (kept[0].id, False, False)]
        assert self._listed(broker, "alice", archived=True) == []
        assert list_page(broker, "alice").unread == 2
        assert first.id not in broker.inbox_state("alice").archived

    def test_snapshot_has_the_unread_count_and_newest_notices(self, broker: Broker) -> None:
        """The snapshot is the unread count and the newest notices (not archived), with their flags."""
        notices = [broker.publish("alice", payload(i)) for i in range(4)]
        change(broker, "alice", [notices[3].id], archived=True)
        change(broker, "alice", [notices[2].id], read=True)
        body = json.loads(snapshot(broker, "alice", 2))
        assert (body["unread"], body["cursor"]) == (2, notices[3].id)  # the archived newest counts
        assert json.loads(snapshot(broker, "nobody", 2)) == {"unread": 0, "cursor": 0, "notices": []}
        assert [(n["id"], n["read"], n["archived"], n["data"]) for n in body["notices"]] == [
            (notices[2].id, True, False, {"n": 2}),
            (notices[1].id, False, False, {"n": 1}),
        ]

    # -- head -------------------------------------------------------------

    def test_head(self, broker: Broker) -> None:
        """head is 0 on an empty store, then the newest id issued."""
        assert broker.head() == 0
        first = broker.publish("alice", payload(1))
        assert broker.head() == first.id
        batch = broker.publish_many([(None, payload(2)), ("bob", payload(3))])
        assert broker.head() == batch[-1].id

    def test_head_does_not_go_back_after_trimming(self, make_broker: MakeBroker) -> None:
        """Dropping notices (even all of them) never lowers head, and new ids stay above it."""
        broker = make_broker(retention_count=1, retention_age=0.2)
        published = [broker.publish("alice", payload(i)) for i in range(3)]
        assert broker.head() == published[-1].id
        time.sleep(0.3)
        assert broker.trim_expired() == 1  # the one retention_count had kept

        assert broker.head() == published[-1].id
        assert broker.replay("alice", str(published[-1].id)) == Replay([], published[-1].id, None)
        assert broker.publish("alice", payload(9)).id > published[-1].id

    # -- the feed ---------------------------------------------------------

    def test_subscribe_delivers_later_notices_in_order(self, broker: Broker) -> None:
        """The callback gets every notice published after subscribe, in order, once, in batches."""
        earlier = broker.publish("alice", payload(0))
        feed = Feed()
        broker.subscribe(feed)
        published = [broker.publish("alice", payload(1)), broker.publish(None, payload(2))]
        published += broker.publish_many([("bob", payload(3)), ("alice", payload(4))])
        published.append(broker.publish("carol", payload(5)))

        got = feed.wait_through(published[-1])
        assert got == published
        assert earlier not in got
        assert all(isinstance(batch, list) and batch for batch in feed.batches)
        assert all(isinstance(n, Notice) for n in got)
        sentinel = broker.publish("alice", payload(6))
        assert feed.wait_through(sentinel) == [*published, sentinel]  # nothing delivered twice

    def test_concurrent_publishers_reach_the_feed_once_in_order(self, make_broker: MakeBroker) -> None:
        """Notices from concurrent publishers reach the feed exactly once, in increasing id order."""
        subscriber = make_broker()
        feed = Feed()
        subscriber.subscribe(feed)
        publishers = [make_broker(), make_broker()] if self.shared else [subscriber]
        threads, per_thread = 4, 25
        published: list[Notice] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(index: int) -> None:
            publisher = publishers[index % len(publishers)]
            try:
                for k in range(per_thread):
                    notice = publisher.publish(f"user{index}", payload(k))
                    with lock:
                        published.append(notice)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(DEADLINE * 4)
        assert not errors
        assert len(published) == threads * per_thread

        sentinel = subscriber.publish("alice", payload(-1))
        got = feed.wait_through(sentinel)
        assert got == [*sorted(published, key=lambda n: n.id), sentinel]

    def test_failing_callback_does_not_fail_publish(self, broker: Broker) -> None:
        """A feed callback that raises neither fails the publish nor stops later deliveries."""
        feed = Feed(fail_first=True)
        broker.subscribe(feed)
        first = broker.publish("alice", payload(1))
        second = broker.publish("alice", payload(2))

        assert feed.wait_through(second) == [first, second]
        assert broker.replay("alice", "0").notices == [first, second]

    def test_ping(self, broker: Broker) -> None:
        """ping succeeds on a working store, before and after use."""
        broker.ping()
        broker.publish("alice", payload(1))
        broker.ping()

    def test_close_stops_the_feed(self, make_broker: MakeBroker) -> None:
        """After close, the closed broker's callback gets nothing more."""
        closed = make_broker(**self.fast_feed)
        feed = Feed()
        closed.subscribe(feed)
        first = closed.publish("alice", payload(1))
        feed.wait_through(first)
        closed.close()

        if self.shared:
            witness = make_broker(**self.fast_feed)
            witness_feed = Feed()
            witness.subscribe(witness_feed)
            late = make_broker().publish("alice", payload(2))
            witness_feed.wait_through(late)  # it was announced...
            time.sleep(0.5)  # ...and a feed still running would have had 10 polls to see it
        else:
            closed.publish("alice", payload(2))
        assert feed.notices == [first]

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
    def test_close_releases_file_descriptors(self, make_broker: MakeBroker) -> None:
        """close() releases every file descriptor the broker (and its feed) opened."""
        before = _open_fds()
        broker = make_broker()
        feed = Feed()
        broker.subscribe(feed)
        feed.wait_through(broker.publish("alice", payload(1)))
        broker.ping()
        broker.close()

        leaked = _open_fds() - before
        assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}


class DurableContract(BrokerContract):
    """The contract of a store whose notices survive closing every broker on it."""

    def test_durable_across_reopen(self, make_broker: MakeBroker) -> None:
        """A new broker on a closed store replays everything and keeps ids increasing."""
        first = make_broker()
        published = [first.publish("alice", payload(1)), first.publish(None, payload(2))]
        published += first.publish_many([("bob", payload(3)), ("alice", payload(4))])
        head = first.head()
        first.close()

        second = make_broker()
        assert second.head() == head
        assert second.replay("alice", "0") == Replay(
            [n for n in published if n.user_id in ("alice", None)], 0, None
        )
        assert second.replay("bob", str(published[0].id)) == Replay(published[1:3], published[0].id, None)
        assert second.publish("alice", payload(5)).id > head

    def test_durable_floors_and_head_after_trimming(self, make_broker: MakeBroker) -> None:
        """After trimming everything and reopening, head and the retention floors are kept."""
        first = make_broker(retention_count=2, retention_age=0.2)
        published = [first.publish("alice", payload(i)) for i in range(4)]
        time.sleep(0.3)
        assert first.trim_expired() == 2
        head = first.head()
        first.close()

        second = make_broker(retention_count=2)
        assert second.head() == head == published[-1].id
        assert second.replay("alice", "0") == Replay([], head, "expired")
        assert second.replay("alice", str(head)) == Replay([], head, None)
        assert second.publish("alice", payload(9)).id == head + 1


class InboxDurableContract(DurableContract):
    """Inbox marks survive closing every broker on the store, and are shared by its processes."""

    def test_inbox_marks_are_shared_and_durable(self, make_broker: MakeBroker) -> None:
        """Marks made through one broker are seen by another on the same store, and after reopening."""
        first = make_broker()
        a1, a2 = first.publish("alice", payload(1)), first.publish("alice", payload(2))
        change(first, "alice", [a1.id], archived=True)
        read_all(first, "alice")
        change(first, "alice", [a2.id], read=False)
        first.close()
        again = make_broker()
        page = list_page(again, "alice")
        assert [(i.notice.id, i.read) for i in page.items] == [(a2.id, False)]
        assert page.unread == 1
        assert [i.notice.id for i in list_page(again, "alice", archived=True).items] == [a1.id]


class TestMemoryBroker(BrokerContract):
    durable = False
    shared = False

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        return MemoryBroker(**options)


class TestRedisBroker(InboxDurableContract):
    durable = True
    shared = True
    fast_feed: t.ClassVar[dict[str, t.Any]] = {"poll_interval": 0.05}

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer) -> None:
        self.url = redis_server.url

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        # One prefix per test: tests share the session's redis-server.
        prefix = "t" + hashlib.sha1(str(store_dir).encode()).hexdigest()[:12] + ":"
        return RedisBroker(self.url, prefix=prefix, **options)


def test_redis_databases_do_not_share_live_notices(redis_server: RedisServer) -> None:
    """Two stores on one Redis with the same prefix but different /db never see each other's notices."""
    zero = RedisBroker(redis_server.url.rsplit("/", 1)[0] + "/0", prefix="dbsplit:")
    one = RedisBroker(redis_server.url.rsplit("/", 1)[0] + "/1", prefix="dbsplit:")
    feed = Feed()
    zero.subscribe(feed)
    try:
        one.publish("alice", payload(1))
        mine = zero.publish("alice", payload(2))
        feed.wait_through(mine)
        assert [n.id for batch in feed.batches for n in batch] == [mine.id]
    finally:
        zero.close()
        one.close()


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
    """wake_all with no listener directory is a no-op."""
    channel = WakeChannel(str(tmp_path / "never-listened.sqlite3"))
    channel.wake_all()
    assert not os.path.exists(channel.directory)


# -- make_broker -----------------------------------------------------------


@pytest.fixture(name="from_url")
def _from_url(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    made: list[Broker] = []

    def build(url: str, **options: t.Any) -> Broker:
        broker = brokers.make_broker(url, base_dir=str(tmp_path), **options)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        broker.close()


def test_make_broker_memory(from_url: Callable[..., Broker]) -> None:
    """memory:// builds a MemoryBroker with the given retention."""
    broker = from_url("memory://", retention_count=7, retention_age=9.0)
    assert isinstance(broker, MemoryBroker)
    assert (broker.retention_count, broker.retention_age) == (7, 9.0)


@pytest.mark.parametrize("relative", ["rel.db", "sub/dir/rel.db"])
def test_make_broker_sqlite_relative(from_url: Callable[..., Broker], tmp_path: Path, relative: str) -> None:
    """sqlite:///relative/path puts the file under base_dir."""
    broker = from_url(f"sqlite:///{relative}", retention_count=5, poll_interval=0.5)
    assert isinstance(broker, SQLiteBroker)
    assert broker.path == str(tmp_path / relative)
    assert (broker.retention_count, broker.poll_interval, broker.synchronous) == (5, 0.5, "NORMAL")
    broker.publish("alice", payload(1))
    assert (tmp_path / relative).is_file()


def test_make_broker_sqlite_absolute(from_url: Callable[..., Broker], tmp_path: Path) -> None:
    """sqlite:////absolute/path is used as is, whatever base_dir says."""
    target = tmp_path / "elsewhere" / "abs.db"
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    broker = brokers.make_broker(url, base_dir=str(tmp_path / "ignored"))
    try:
        assert isinstance(broker, SQLiteBroker)
        assert broker.path == str(target)
        broker.ping()
        assert target.is_file()
    finally:
        broker.close()


@pytest.mark.parametrize("value", ["FULL", "full", "OFF", "EXTRA"])
def test_make_broker_sqlite_synchronous(from_url: Callable[..., Broker], value: str) -> None:
    """?synchronous= is accepted and passed to the store."""
    broker = from_url(f"sqlite:///x.db?synchronous={value}")
    assert isinstance(broker, SQLiteBroker)
    assert broker.synchronous == value.upper()
    broker.ping()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://localhost/0", "unknown store postgres://"),
        ("postgres://db/x", "unknown store postgres://"),
        ("notices.sqlite3", "must look like scheme://"),
        ("sqlite:", "must look like scheme://"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///?synchronous=FULL", "names no file"),
        ("sqlite://host/x.db", "has a host"),
        ("sqlite://localhost/x.db", "has a host"),
        ("sqlite:///x.db?foo=1", "unknown SQLite URL option.*foo"),
        ("sqlite:///x.db?synchronous=FULL&cache=shared", "unknown SQLite URL option.*cache"),
        ("sqlite:///x.db?synchronous=SOMETIMES", "synchronous must be"),
        pytest.param("sqlite:///x.db?foo", "foo", id="valueless-option"),
        pytest.param("sqlite:///x.db?synchronous=", "synchronous", id="blank-synchronous"),
    ],
)
def test_make_broker_refuses(tmp_path: Path, url: str, message: str) -> None:
    """A URL that names no usable store raises ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=message):
        brokers.make_broker(url, base_dir=str(tmp_path))
