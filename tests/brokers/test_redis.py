"""``redis://``: the contract against a real redis-server (the session's), and what only Redis has."""

from __future__ import annotations

import hashlib
import time
import typing as t
from pathlib import Path

import pytest
import redis

from sse_notify.brokers import Broker
from sse_notify.brokers.base import Followed
from sse_notify.brokers.redis import RedisBroker
from sse_notify.control import Control, Kind
from sse_notify.notices import Notice

from ..support import RedisServer, wait_for
from .contract import Feed, InboxDurableContract, listen, payload


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
    listen(zero, feed)
    try:
        one.publish("alice", payload(1))
        mine = zero.publish("alice", payload(2))
        feed.wait_through(mine)
        assert [n.id for batch in feed.batches for n in batch] == [mine.id]
    finally:
        zero.close()
        one.close()


def feed_address(broker: RedisBroker) -> tuple[str, int] | None:
    """The local address of the feed's pub/sub connection, once it is subscribed (``None`` before)."""
    pubsub = broker._pubsub
    connection = pubsub and pubsub.connection
    sock = connection and connection._sock
    return sock.getsockname()[:2] if sock and pubsub.subscribed else None


class TestTargetedDelivery:
    """A worker's feed gets the notices of the users it follows, broadcasts and control records; no others."""

    @pytest.fixture(name="make")
    def _make(self, redis_server: RedisServer, tmp_path: Path) -> t.Iterator[t.Callable[..., RedisBroker]]:
        prefix = "tg" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12] + ":"
        made: list[RedisBroker] = []

        def make(**options: t.Any) -> RedisBroker:
            made.append(RedisBroker(redis_server.url, prefix=prefix, **options))
            return made[-1]

        yield make
        for broker in made:
            broker.close()

    def test_a_feed_gets_only_the_users_it_follows(self, make: t.Callable[..., RedisBroker]) -> None:
        """Notices of a user nobody here follows never reach the feed; followed users' and broadcasts do."""
        broker, publisher = make(), make()
        feed = Feed()
        listen(broker, feed, ["alice"])
        sent = [publisher.publish("stranger", payload(1)), publisher.publish("alice", payload(2))]
        sent += publisher.publish_many([("stranger", payload(3)), (None, payload(4)), ("alice", payload(5))])
        feed.wait_through(sent[-1])
        assert feed.notices == [sent[1], sent[3], sent[4]]

    def test_follow_returns_the_head_before_it_subscribed_then_none(
        self, make: t.Callable[..., RedisBroker]
    ) -> None:
        """A first follow gives the head read before subscribing (nothing missed); a second, None."""
        broker, publisher = make(), make()
        listen(broker, Feed(), [])
        publisher.publish("alice", payload(1))
        head = publisher.head()
        assert broker.follow(["alice"]) == Followed(head, missed=False)
        assert broker.follow(["alice"]) is None

    def test_a_notice_published_while_following_is_reported_missed(
        self, make: t.Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A notice published after the head was read but before the subscription: follow says missed."""
        broker, publisher = make(), make()
        feed = Feed()
        listen(broker, feed, [])
        read_head = broker.head
        early: list[Notice] = []

        def head_then_publish() -> int:
            head = read_head()
            early.append(publisher.publish("alice", payload(1)))  # the feed does not follow alice yet
            return head

        monkeypatch.setattr(broker, "head", head_then_publish)
        followed = broker.follow(["alice"])
        assert followed is not None
        assert followed.missed
        assert broker.replay("alice", str(followed.cursor)).notices == early
        later = publisher.publish("alice", payload(2))
        assert feed.wait_through(later) == [later]

    def test_a_stream_follows_its_user_and_topics_in_one_round(
        self, make: t.Callable[..., RedisBroker], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """follow([user, *topics]) reads the head once; a notice of any one of them meanwhile is missed."""
        broker, publisher = make(), make()
        feed = Feed()
        listen(broker, feed, [])
        heads: list[int] = []
        read_head = broker.head

        def counted() -> int:
            heads.append(read_head())
            if len(heads) == 1:
                publisher.publish("#team-7", payload(1))  # before the subscriptions: missed
            return heads[-1]

        monkeypatch.setattr(broker, "head", counted)
        followed = broker.follow(["alice", "#match-42", "#team-7"])
        assert followed == Followed(heads[0], missed=True)
        assert len(heads) == 1
        assert broker.follow(["alice", "#team-7"]) is None  # both followed already: no round
        assert len(heads) == 1

    def test_a_notice_published_right_after_follow_returns_arrives(
        self, make: t.Callable[..., RedisBroker]
    ) -> None:
        """follow returns only once Redis confirmed the subscription: the very next publish is delivered."""
        broker, publisher = make(), make()
        feed = Feed()
        listen(broker, feed, [])
        sent = []
        for n in range(40):
            broker.follow([f"new{n}"])
            sent.append(publisher.publish(f"new{n}", payload(n)))
        assert feed.wait_through(sent[-1]) == sent

    def test_unfollow_stops_delivery_after_the_linger(self, make: t.Callable[..., RedisBroker]) -> None:
        """A user gone longer than the linger is unsubscribed; one back within it needs no new subscribe."""
        broker, publisher = make(linger=0.3, poll_interval=0.05), make()
        feed = Feed()
        listen(broker, feed, ["alice", "bob"])
        broker.unfollow("alice")
        broker.unfollow("bob")
        assert broker.follow(["bob"]) is None  # back at once: still subscribed
        time.sleep(1.0)
        gone = publisher.publish("alice", payload(1))
        kept = publisher.publish("bob", payload(2))
        feed.wait_through(kept)
        assert gone not in feed.notices
        assert broker.follow(["alice"]) is not None  # subscribed again
        again = publisher.publish("alice", payload(3))
        assert feed.wait_through(again) == [kept, again]

    def test_control_records_about_a_user_go_to_its_followers_only(
        self, make: t.Callable[..., RedisBroker]
    ) -> None:
        """A kick of a user nobody here follows does not reach the feed; preferences (for every hub) do."""
        broker, publisher = make(), make()
        feed = Feed()
        listen(broker, feed, ["alice"])
        publisher.publish_control(Control(Kind.KICK, "stranger"))
        publisher.publish_control(Control(Kind.KICK, "alice"))
        prefs = Control(Kind.PREFERENCES, "stranger", {"categories": {}})
        publisher.publish_control(prefs)
        sentinel = publisher.publish("alice", payload(1))
        assert feed.wait_items(3) == [Control(Kind.KICK, "alice"), prefs, sentinel]

    def test_a_lost_subscription_catches_up_every_followed_user(
        self, make: t.Callable[..., RedisBroker], redis_server: RedisServer
    ) -> None:
        """After Redis drops the feed's connection, what was published meanwhile arrives once, in order."""
        broker, publisher = make(poll_interval=0.05), make()
        feed = Feed()
        users = [f"u{n}" for n in range(20)]
        listen(broker, feed, users)
        admin = redis.Redis.from_url(redis_server.url)
        sent = []
        for round_ in range(5):
            sent += [publisher.publish(user, payload(round_)) for user in users[:10]]
            sent.append(publisher.publish(None, payload(round_)))
            sent.append(publisher.publish("stranger", payload(round_)))
            host, port = wait_for(lambda: feed_address(broker), 10, "the feed to subscribe")
            assert admin.client_kill_filter(_type="pubsub", addr=f"{host}:{port}") == 1
            sent += [publisher.publish(user, payload(round_)) for user in users[5:]]
            sent.append(publisher.publish(None, payload(round_)))
        admin.close()
        wanted = [n for n in sent if n.user_id != "stranger"]
        got = feed.wait_through(wanted[-1])
        assert got == wanted
