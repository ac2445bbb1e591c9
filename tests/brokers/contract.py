"""The store contract: one suite that every backend passes.

:class:`BrokerContract` holds every test that any store must pass. Each backend
gets a subclass in a module of its own (``test_memory.py``, ``test_sqlite.py``,
``test_redis.py``) that says how to build it (:meth:`BrokerContract.create`) and
what it promises (``durable``, ``shared``, ``fast_feed``); nothing here knows which
backend it is testing.

Tests run without gevent's monkey-patching, so a backend's feed may call back
from a real thread: every wait for a delivery has a deadline (:class:`Feed`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import typing as t
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sse_notify.brokers import Broker, Replay
from sse_notify.control import Control, Kind
from sse_notify.delivery import Options
from sse_notify.errors import BrokerClosed, BrokerError, IdempotencyKeyReused, NoticeNotFound
from sse_notify.inbox import change, list_page, read_all, snapshot
from sse_notify.notices import Notice, dumps, stored_text

#: The longest a test waits for something that should take milliseconds.
DEADLINE = 5.0

MakeBroker = Callable[..., Broker]


def payload(n: int, **extra: t.Any) -> str:
    """A small JSON object as a publisher would send it."""
    return dumps({"n": n, **extra})


def grouped(n: int, key: str = "likes") -> str:
    """The stored text of notice ``n`` of a group, as a publish gives it to a store."""
    data = payload(n)
    return stored_text(data, Options(group=key).meta_json(data))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def run_together(work: Callable[[int], None], count: int, timeout: float = DEADLINE) -> None:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads at once; fail with the first error any raised."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    if errors:
        raise errors[0]


#: The users the contract's feeds follow (``Broker.follow``): the tests publish to them.
FOLLOWED = ("alice", "bob", "carol", *(f"user{i}" for i in range(4)))


def listen(broker: Broker, feed: Feed, users: Sequence[str] = FOLLOWED) -> None:
    """Make ``feed`` the store's feed of this process, following ``users`` (as their first streams would)."""
    broker.subscribe(feed)
    broker.follow(list(users))


def _audience(item: Notice | Control) -> str:
    """Whose order an item of the feed keeps: its user's, the broadcasts' (``*``), its topic's, or ``!``."""
    if isinstance(item, Control):
        return item.user_id if item.kind in (Kind.KICK, Kind.STATE) and item.user_id else "!"
    return item.key or "*"


class Feed:
    """A feed handler that records its batches and control records, and lets a test wait for them."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.batches: list[list[Notice]] = []
        self.received_at: list[float] = []
        #: Everything handed over, in order: notices and control records.
        self.items: list[Notice | Control] = []
        self._fail_next = fail_first
        self._cond = threading.Condition()

    def handle_notices(self, notices: Sequence[Notice]) -> None:
        with self._cond:
            self.batches.append(list(notices))
            self.items += notices
            self.received_at.append(time.monotonic())
            fail, self._fail_next = self._fail_next, False
            self._cond.notify_all()
        if fail:
            raise RuntimeError("this feed handler fails on purpose")

    def handle_control(self, record: Control) -> None:
        with self._cond:
            self.items.append(record)
            self._cond.notify_all()

    def wait_items(self, count: int, timeout: float = DEADLINE) -> list[Notice | Control]:
        """Wait until at least ``count`` items (notices or control records) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"feed did not get {count} items within {timeout} s; got {self.items}")
                self._cond.wait(remaining)
            return list(self.items)

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
    #: Whether the feed brings every audience's items in one order (``Broker.positional`` is the
    #: opposite): else only each audience's (a user's, the broadcasts', a topic's) are in order.
    ordered: t.ClassVar[bool] = True

    def assert_in_order(self, got: Sequence[Notice | Control], expected: Sequence[Notice | Control]) -> None:
        """``got`` is ``expected``: in that order, or (not :attr:`ordered`) in each audience's order."""
        if self.ordered:
            assert list(got) == list(expected)
            return
        assert len(got) == len(expected)
        for audience in {_audience(item) for item in expected}:
            mine = [item for item in got if _audience(item) == audience]
            assert mine == [item for item in expected if _audience(item) == audience], audience

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
        listen(broker, feed)
        broker.publish_many([])
        sentinel = broker.publish("alice", payload(1))

        feed.wait_through(sentinel)
        assert feed.batches == [[sentinel]]

    def test_publish_many_failing_part_way_stores_nothing(self, broker: Broker) -> None:
        """A batch that fails on its second item raises and stores (and announces) none of it."""
        kept = broker.publish("alice", payload(0))
        head = broker.head()
        feed = Feed()
        listen(broker, feed)
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
        listen(broker, feed)
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
        self.assert_in_order(feed.wait_count(3), [*first.notices, sentinel])
        time.sleep(0.1)
        assert len(feed.notices) == 3  # announced once

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

        def work(index: int) -> None:
            results.append(
                brokers_[index % len(brokers_)].publish_once([("alice", payload(7))], "race", "fp", 60)
            )

        run_together(work, 6)
        assert sorted(r.replayed for r in results) == [False] + [True] * 5
        assert len({r.notices[0].id for r in results}) == 1
        assert len(brokers_[0].replay("alice", "0").notices) == 1

    # -- grouping -----------------------------------------------------------

    def test_grouped_notices_fold_into_the_unread_entry(self, broker: Broker) -> None:
        """Each grouped notice replaces the group's unread entry: one entry, counted, newest data first."""
        feed = Feed()
        listen(broker, feed)
        sent = [broker.publish("alice", grouped(n)) for n in range(7)]
        other = broker.publish("alice", grouped(9, key="other"))
        last = sent[-1]
        group = last.meta["group"]
        assert (last.data, group["count"], group["key"]) == ({"n": 6}, 7, "likes")
        assert group["recent"] == [{"n": n} for n in (6, 5, 4, 3, 2)]
        assert (group["first_at"], group["last_at"]) == (sent[0].created_at, last.created_at)
        assert group["replaces"] == sent[-2].id
        assert broker.inbox_ids("alice") == [other.id, last.id]
        assert [n.id for n in broker.replay("alice", "0").notices] == [last.id, other.id]
        assert [n.id for n in feed.wait_count(8)] == [n.id for n in [*sent, other]]

    def test_a_read_or_archived_entry_starts_a_new_one(self, broker: Broker) -> None:
        """Once the entry is read (or archived), the next notice of the group starts a new entry."""
        first = broker.publish("alice", grouped(1))
        change(broker, "alice", [first.id], read=True)
        second = broker.publish("alice", grouped(2))
        assert ("replaces" in second.meta["group"], second.meta["group"]["count"]) == (False, 1)
        third = broker.publish("alice", grouped(3))
        assert (third.meta["group"]["replaces"], third.meta["group"]["count"]) == (second.id, 2)
        change(broker, "alice", [third.id], archived=True)
        fourth = broker.publish("alice", grouped(4))
        assert fourth.meta["group"]["count"] == 1
        read_all(broker, "alice")
        fifth = broker.publish("alice", grouped(5))
        assert fifth.meta["group"]["count"] == 1
        assert broker.inbox_ids("alice") == [fifth.id, fourth.id, third.id, first.id]
        assert broker.publish("bob", grouped(6)).meta["group"]["count"] == 1  # groups are per user

    def test_concurrent_grouped_publishes_fold_into_one_entry(self, make_broker: MakeBroker) -> None:
        """20 publishes at once, from one or several processes' brokers: one entry, count 20."""
        brokers_ = [make_broker(), make_broker()] if self.shared else [make_broker()]
        run_together(lambda index: brokers_[index % len(brokers_)].publish("alice", grouped(index)), 20)
        (newest,) = brokers_[0].inbox_notices("alice", brokers_[0].inbox_ids("alice"))
        assert newest.meta["group"]["count"] == 20

    # -- the scheduler ---------------------------------------------------

    def test_scheduler_claims_what_is_due_once_per_lease(self, broker: Broker) -> None:
        """An entry is claimed once due, by one claim per lease; unfinished, it falls due again."""
        broker.schedule("notice", "a", 100.0, payload(1))
        assert broker.claim_due(99.5, 10, 30) == []
        (first,) = broker.claim_due(100.0, 10, 30)
        assert (first.kind, first.key, first.due, json.loads(first.payload)) == (
            "notice",
            "a",
            100.0,
            {"n": 1},
        )
        assert broker.claim_due(129.0, 10, 30) == []  # leased to the first claim
        (second,) = broker.claim_due(130.0, 10, 30)  # the lease ran out: due again
        assert (second.key, second.due, second.payload) == ("a", 100.0, first.payload)
        assert second.token != first.token
        broker.finish([first])  # that claim's lease ran out: the entry is not its to forget
        assert broker.scheduled("notice") == 1
        broker.finish([second])
        assert broker.scheduled("notice") == 0
        assert broker.claim_due(10_000.0, 10, 30) == []

    def test_scheduler_claims_the_earliest_first_up_to_the_limit(self, broker: Broker) -> None:
        """Claims take due entries in due order, at most ``limit`` at a time, of every kind."""
        for due in (5.0, 3.0, 9.0, 1.0, 7.0, 50.0):
            broker.schedule("snooze" if due == 3.0 else "notice", f"k{int(due)}", due, payload(int(due)))
        assert [d.due for d in broker.claim_due(10.0, 3, 60)] == [1.0, 3.0, 5.0]
        later = broker.claim_due(10.0, 3, 60)
        assert [(d.kind, d.key) for d in later] == [("notice", "k7"), ("notice", "k9")]
        assert (broker.scheduled("notice"), broker.scheduled("snooze"), broker.scheduled("other")) == (
            5,
            1,
            0,
        )

    def test_scheduling_a_key_again_replaces_its_entry(self, broker: Broker) -> None:
        """A key scheduled again gets the new time and payload; an earlier claim cannot forget it."""
        broker.schedule("notice", "a", 100.0, payload(1))
        (claimed,) = broker.claim_due(100.0, 10, 30)
        broker.schedule("notice", "a", 200.0, payload(2))
        broker.finish([claimed])
        assert broker.claim_due(150.0, 10, 30) == []
        (again,) = broker.claim_due(200.0, 10, 30)
        assert (again.due, json.loads(again.payload)) == (200.0, {"n": 2})
        assert broker.unschedule("notice", "a") is True
        assert broker.unschedule("notice", "a") is False
        assert broker.claim_due(10_000.0, 10, 30) == []
        with pytest.raises(ValueError, match="kind"):
            broker.schedule("no:colons", "a", 1.0, payload(1))

    def test_schedule_many_keeps_each_entry_as_schedule_would(self, broker: Broker) -> None:
        """schedule_many keeps every entry in one call, replacing those of the same key; none is a no-op."""
        broker.schedule("fallback", "1:alice", 50.0, "old")
        broker.schedule_many("fallback", [("1:alice", 20.0, ""), ("1:bob", 10.0, "b"), ("2:a:b", 30.0, "c")])
        broker.schedule_many("fallback", [])
        assert broker.scheduled("fallback") == 3
        claimed = broker.claim_due(40.0, 10, 30)
        assert [(d.key, d.due, d.payload) for d in claimed] == [
            ("1:bob", 10.0, "b"),
            ("1:alice", 20.0, ""),
            ("2:a:b", 30.0, "c"),
        ]
        with pytest.raises(ValueError, match="kind"):
            broker.schedule_many("no:colons", [("a", 1.0, "")])

    def test_user_records_are_kept_per_kind_and_user(self, broker: Broker) -> None:
        """set_user_record keeps, replaces and forgets one record; user_records lists a user's of a kind."""
        assert broker.user_records("push", "alice") == {}
        assert broker.set_user_record("push", "alice", "https://push.example/1", '{"a":1}') is False
        assert broker.set_user_record("push", "alice", "https://push.example/2", '{"a":2}') is False
        assert broker.set_user_record("push", "alice", "https://push.example/1", '{"a":3}') is True
        broker.set_user_record("contacts", "alice", "email", "alice@example.com")
        broker.set_user_record("push", "bob", "https://push.example/1", "{}")
        assert broker.user_records("push", "alice") == {
            "https://push.example/1": '{"a":3}',
            "https://push.example/2": '{"a":2}',
        }
        assert broker.user_records("contacts", "alice") == {"email": "alice@example.com"}
        assert broker.set_user_record("push", "alice", "https://push.example/1", None) is True
        assert broker.set_user_record("push", "alice", "https://push.example/1", None) is False
        assert broker.user_records("push", "alice") == {"https://push.example/2": '{"a":2}'}
        assert broker.user_records("push", "bob") == {"https://push.example/1": "{}"}

    def test_pending_shows_an_entry_while_it_waits(self, broker: Broker) -> None:
        """pending gives an entry's payload, claimed or not, until it is finished or unscheduled."""
        assert broker.pending("notice", "a") is None
        broker.schedule("notice", "a", 100.0, payload(1))
        broker.schedule("other", "a", 100.0, payload(2))
        assert json.loads(broker.pending("notice", "a") or "") == {"n": 1}
        (claimed,) = [d for d in broker.claim_due(100.0, 10, 30) if d.kind == "notice"]
        assert json.loads(broker.pending("notice", "a") or "") == {"n": 1}
        broker.finish([claimed])
        assert broker.pending("notice", "a") is None
        assert json.loads(broker.pending("other", "a") or "") == {"n": 2}
        broker.unschedule("other", "a")
        assert broker.pending("other", "a") is None

    def test_scheduler_claims_are_exclusive_under_concurrency(self, make_broker: MakeBroker) -> None:
        """Workers claiming at once (one or several processes' brokers) take each due entry exactly once."""
        brokers_ = [make_broker(), make_broker()] if self.shared else [make_broker()]
        for i in range(120):
            brokers_[0].schedule("notice", f"n{i}", float(i % 7), payload(i))
        claimed: list[str] = []

        def work(index: int) -> None:
            while found := brokers_[index % len(brokers_)].claim_due(10.0, 7, 60):
                claimed.extend(d.key for d in found)

        run_together(work, 4)
        assert sorted(claimed) == sorted(f"n{i}" for i in range(120))

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

    # -- topics -----------------------------------------------------------

    def test_topic_notices_are_replayed_with_their_topic_and_listed_nowhere(self, broker: Broker) -> None:
        """A topic's notice is in a replay that names its topic, in order with the user's; in no inbox."""
        mine = broker.publish("alice", payload(1))
        goal = broker.publish("#match-42", payload(2))
        other = broker.publish("#team-7", payload(3))
        everyone = broker.publish(None, payload(4))
        assert (goal.topic, goal.user_id, goal.is_broadcast) == ("match-42", None, False)
        assert broker.replay("alice", "0").notices == [mine, everyone]
        assert broker.replay("alice", "0", ["match-42"]).notices == [mine, goal, everyone]
        assert broker.replay("bob", str(mine.id), ["team-7", "match-42"]).notices == [goal, other, everyone]
        assert goal.id not in broker.inbox_ids("alice")
        assert broker.inbox_notices("alice", [goal.id, mine.id]) == [mine]

    def test_a_topics_retention_resets_a_resume_that_needs_it(self, make_broker: MakeBroker) -> None:
        """A resume whose topic's notices were dropped past its cursor gets a reset, as for a user's."""
        broker = make_broker(retention_count=2)
        first = broker.publish("#match-42", payload(1))
        for n in range(3):
            broker.publish("#match-42", payload(n))
        assert broker.replay("alice", str(first.id)).reset is None  # no topic named: nothing lost
        assert broker.replay("alice", str(first.id), ["match-42"]).reset is not None

    def test_the_feed_brings_a_followed_topics_notices(self, broker: Broker) -> None:
        """A feed that follows ``#<topic>`` gets that topic's notices, in order among the user's."""
        feed = Feed()
        listen(broker, feed, ["alice", "#match-42"])
        sent = [broker.publish("#match-42", payload(1)), broker.publish("alice", payload(2))]
        sent.append(broker.publish("#match-42", payload(3)))
        self.assert_in_order(feed.wait_count(len(sent)), sent)

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

    def test_snooze_hides_a_notice_until_it_wakes_once(self, broker: Broker) -> None:
        """snooze keeps the other marks; wake ends only the same snooze and marks the notice unread."""
        mine = broker.publish("alice", payload(1))
        everyone = broker.publish(None, payload(2))
        change(broker, "alice", [mine.id], archived=True)
        broker.snooze("alice", mine.id, 2_000_000_000.5)
        broker.snooze("alice", everyone.id, 2_000_000_000.25)
        read_all(broker, "alice")
        state = broker.inbox_state("alice")
        assert (state.snoozed, mine.id in state.archived) == (
            {mine.id: 2_000_000_000.5, everyone.id: 2_000_000_000.25},
            True,
        )
        assert state.unread([mine.id, everyone.id]) == 0
        assert broker.inbox_state("bob").snoozed == {}
        assert broker.wake("alice", mine.id, 2_000_000_000.0) is False  # another snooze: left alone
        broker.snooze("alice", mine.id, 2_000_000_001.0)  # moved
        assert broker.wake("alice", mine.id, 2_000_000_000.5) is False
        assert broker.wake("alice", mine.id, 2_000_000_001.0) is True
        assert broker.wake("alice", mine.id, 2_000_000_001.0) is False  # once
        state = broker.inbox_state("alice")
        assert (state.snoozed, state.is_read(mine.id), mine.id in state.archived) == (
            {everyone.id: 2_000_000_000.25},
            False,
            True,
        )
        change(broker, "alice", [everyone.id], read=False)  # other marks keep the snooze
        assert broker.inbox_state("alice").snoozed == {everyone.id: 2_000_000_000.25}

    def test_delete_removes_own_notices_from_inbox_replay_and_marks(self, broker: Broker) -> None:
        """delete_notices removes the user's own notices (never a broadcast or another's) for good."""
        mine = [broker.publish("alice", payload(i)) for i in range(3)]
        everyone = broker.publish(None, payload(9))
        bobs = broker.publish("bob", payload(8))
        change(broker, "alice", [mine[1].id], read=True)
        removed = broker.delete_notices("alice", [mine[1].id, everyone.id, bobs.id, 999_999])
        assert removed == [mine[1].id]
        assert broker.inbox_ids("alice") == [everyone.id, mine[2].id, mine[0].id]
        assert [n.id for n in broker.replay("alice", "0").notices] == [mine[0].id, mine[2].id, everyone.id]
        assert mine[1].id not in broker.inbox_state("alice").read
        assert broker.inbox_ids("bob") == [bobs.id, everyone.id]
        assert broker.delete_notices("alice", [mine[1].id]) == []

    def test_delivery_fields_travel_with_the_notice(self, broker: Broker) -> None:
        """A notice's delivery header is kept apart from its data: publish, feed, replay and inbox agree."""
        feed = Feed()
        listen(broker, feed)
        text = stored_text(payload(1), dumps({"category": "promo", "critical": True}))
        sent = broker.publish("alice", text)
        assert (sent.data_json, sent.meta) == (payload(1), {"category": "promo", "critical": True})
        (live,) = feed.wait_count(1)
        (replayed,) = broker.replay("alice", "0").notices
        (listed,) = broker.inbox_notices("alice", [sent.id])
        assert sent == live == replayed == listed
        assert json.loads(sent.to_json()) == {
            "id": sent.id,
            "user_id": "alice",
            "created_at": sent.created_at,
            "data": {"n": 1},
            "category": "promo",
            "critical": True,
        }

    def test_preferences_are_kept_per_user(self, broker: Broker) -> None:
        """set_preferences replaces a user's text; preferences answers only those who set some."""
        assert broker.preferences(["alice", "bob"]) == {}
        assert broker.preferences_exist() is False
        broker.set_preferences("alice", '{"default":{"in_app":false}}')
        assert broker.preferences_exist() is True
        broker.set_preferences("bob", '{"default":{}}')
        broker.set_preferences("alice", '{"default":{}}')
        assert broker.preferences(["alice", "bob", "carol"]) == {
            "alice": '{"default":{}}',
            "bob": '{"default":{}}',
        }
        assert broker.preferences(["bob"]) == {"bob": '{"default":{}}'}
        assert broker.preferences([]) == {}

    def test_snapshot_has_the_unread_count_and_newest_notices(self, broker: Broker) -> None:
        """The snapshot is the unread count and the newest notices (not archived), with their flags."""
        notices = [broker.publish("alice", payload(i)) for i in range(4)]
        change(broker, "alice", [notices[3].id], archived=True)
        change(broker, "alice", [notices[2].id], read=True)
        body = json.loads(snapshot(broker, "alice", 2))
        assert (body["unread"], body["cursor"]) == (2, notices[3].id)  # the archived newest counts
        assert json.loads(snapshot(broker, "nobody", 2)) == {
            "unread": 0,
            "cursor": 0,
            "notices": [],
            "preferences": {"categories": {}, "default": {}, "quiet_hours": None},
        }
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
        listen(broker, feed)
        published = [broker.publish("alice", payload(1)), broker.publish(None, payload(2))]
        published += broker.publish_many([("bob", payload(3)), ("alice", payload(4))])
        published.append(broker.publish("carol", payload(5)))

        got = feed.wait_count(len(published))
        self.assert_in_order(got, published)
        assert earlier not in got
        assert all(isinstance(batch, list) and batch for batch in feed.batches)
        assert all(isinstance(n, Notice) for n in got)
        sentinel = broker.publish("alice", payload(6))
        self.assert_in_order(feed.wait_count(len(published) + 1), [*published, sentinel])
        time.sleep(0.1)
        assert len(feed.notices) == len(published) + 1  # nothing delivered twice

    def test_concurrent_publishers_reach_the_feed_once_in_order(self, make_broker: MakeBroker) -> None:
        """Notices from concurrent publishers reach the feed exactly once, in increasing id order."""
        subscriber = make_broker()
        feed = Feed()
        listen(subscriber, feed)
        publishers = [make_broker(), make_broker()] if self.shared else [subscriber]
        threads, per_thread = 4, 25
        published: list[Notice] = []
        lock = threading.Lock()

        def work(index: int) -> None:
            publisher = publishers[index % len(publishers)]
            for k in range(per_thread):
                notice = publisher.publish(f"user{index}", payload(k))
                with lock:
                    published.append(notice)

        run_together(work, threads, timeout=DEADLINE * 4)
        assert len(published) == threads * per_thread

        sentinel = subscriber.publish("alice", payload(-1))
        got = feed.wait_count(len(published) + 1)
        self.assert_in_order(got, [*sorted(published, key=lambda n: n.id), sentinel])

    def test_failing_callback_does_not_fail_publish(self, broker: Broker) -> None:
        """A feed callback that raises neither fails the publish nor stops later deliveries."""
        feed = Feed(fail_first=True)
        listen(broker, feed)
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
        listen(closed, feed)
        first = closed.publish("alice", payload(1))
        feed.wait_through(first)
        closed.close()

        if self.shared:
            witness = make_broker(**self.fast_feed)
            witness_feed = Feed()
            listen(witness, witness_feed)
            late = make_broker().publish("alice", payload(2))
            witness_feed.wait_through(late)  # it was announced...
            time.sleep(0.5)  # ...and a feed still running would have had 10 polls to see it
        else:
            with pytest.raises(BrokerClosed, match="closed"):
                closed.publish("alice", payload(2))
        assert feed.notices == [first]

    def test_closing_twice_is_harmless_and_does_not_wait(self, make_broker: MakeBroker) -> None:
        """A second close (an app's teardown after a test's) neither raises nor waits for a feed."""
        broker = make_broker(**self.fast_feed)
        feed = Feed()
        listen(broker, feed)
        feed.wait_through(broker.publish("alice", payload(1)))
        broker.close()
        started = time.monotonic()
        broker.close()
        assert time.monotonic() - started < 1.0, "the second close waited for a feed already stopped"

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
    def test_close_releases_file_descriptors(self, make_broker: MakeBroker) -> None:
        """close() releases every file descriptor the broker (and its feed) opened."""
        before = _open_fds()
        broker = make_broker()
        feed = Feed()
        listen(broker, feed)
        feed.wait_through(broker.publish("alice", payload(1)))
        broker.ping()
        broker.close()

        leaked = _open_fds() - before
        assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked}

    # -- control records ---------------------------------------------------

    def test_control_records_reach_the_feed_in_order_among_notices(self, broker: Broker) -> None:
        """A control record reaches the feed as itself, typed, between the notices around it."""
        feed = Feed()
        listen(broker, feed)
        before = broker.publish("alice", payload(1))
        kick = Control(Kind.KICK, "alice")
        broker.publish_control(kick)
        state = Control(Kind.STATE, "bob", {"event": "read", "data": {"ids": [before.id], "unread": 0}})
        broker.publish_control(state)
        after = broker.publish("alice", payload(2))
        self.assert_in_order(feed.wait_items(4), [before, kick, state, after])

    def test_control_records_are_never_replayed_or_listed(self, broker: Broker) -> None:
        """A control record about a user is in no replay and no inbox of that user (nor anyone's)."""
        notice = broker.publish("alice", payload(1))
        broker.publish_control(Control(Kind.KICK, "alice"))
        broker.publish_control(Control(Kind.STATE, "alice", {"event": "read", "data": {}}))
        assert broker.replay("alice", "0").notices == [notice]
        assert broker.inbox_ids("alice") == [notice.id]
        assert list_page(broker, "alice").unread == 1

    # -- one feed and one connection per process ------------------------------

    def test_a_process_has_one_feed(self, broker: Broker) -> None:
        """A second subscribe in the same process is refused: the hub is the one handler."""
        broker.subscribe(Feed())
        with pytest.raises(RuntimeError, match="already has a feed"):
            broker.subscribe(Feed())

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (gunicorn's workers are forked)")
    def test_a_forked_child_opens_its_own_connection_and_feed(self, broker: Broker) -> None:
        """After a fork the child subscribes again (the guard is per process) and its feed works."""
        broker.subscribe(Feed())
        broker.ping()  # the parent's connection exists before the fork
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, and leave at once whatever happens
            code = 1
            try:
                feed = Feed()
                listen(broker, feed)
                sent = broker.publish("alice", payload(7))
                got = feed.wait_through(sent)
                os.write(write, json.dumps([n.id for n in got]).encode())
                code = 0
            except BaseException:
                os.write(write, traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            reported = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, reported
        assert json.loads(reported)  # the child's own feed delivered its notice
        broker.ping()  # and the parent's connection still works

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (gunicorn's workers are forked)")
    def test_a_fork_while_the_feed_is_busy_never_hangs_the_child(self, broker: Broker) -> None:
        """A child forked while the parent's feed and publishers are inside store calls can use the store."""
        broker.subscribe(Feed())
        stop = threading.Event()

        def publish() -> None:
            while not stop.is_set():
                broker.publish("alice", payload(1))

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        try:
            for _ in range(10):
                pid = os.fork()
                if pid == 0:  # the child: one call of its own, then leave at once
                    code = 1
                    try:
                        broker.head()
                        code = 0
                    finally:
                        os._exit(code)
                deadline = time.monotonic() + 20
                while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                if done[0] == 0:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail("the forked child hung in its first store call")
                assert os.waitstatus_to_exitcode(done[1]) == 0
        finally:
            stop.set()
            publisher.join(10)


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

    def test_scheduled_entries_are_durable_and_shared(self, make_broker: MakeBroker) -> None:
        """Entries (claimed ones included) survive closing every broker; a claim's lease still holds."""
        first = make_broker()
        first.schedule("notice", "a", 100.0, payload(1))
        first.schedule("notice", "b", 100.0, payload(2))
        (claimed,) = first.claim_due(100.0, 1, 30)
        first.close()
        again = make_broker()
        assert again.scheduled("notice") == 2
        (other,) = again.claim_due(101.0, 10, 60)
        assert other.key != claimed.key
        assert [d.key for d in again.claim_due(131.0, 10, 30)] == [claimed.key]

    def test_user_records_are_durable_and_shared(self, make_broker: MakeBroker) -> None:
        """A record kept by one broker is there for another, after the first is closed."""
        first = make_broker()
        first.set_user_record("contacts", "alice", "email", "alice@example.com")
        first.close()
        assert make_broker().user_records("contacts", "alice") == {"email": "alice@example.com"}


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
