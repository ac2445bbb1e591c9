"""``redis+cluster://``: the contract against a real Redis Cluster (the session's), and what only it has."""

from __future__ import annotations

import hashlib
import time
import typing as t
from pathlib import Path

import pytest

from sse_notify.brokers import Broker
from sse_notify.brokers.cluster import RedisClusterBroker
from sse_notify.errors import BrokerUnavailable

from ..support import RedisCluster, wait_for
from .contract import Feed, InboxDurableContract, listen, payload


class TestRedisClusterBroker(InboxDurableContract):
    durable = True
    shared = True
    ordered = False
    fast_feed: t.ClassVar[dict[str, t.Any]] = {"poll_interval": 0.05}

    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster: RedisCluster) -> None:
        self.url = redis_cluster.url

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        # One prefix per test: tests share the session's cluster.
        prefix = "t" + hashlib.sha1(str(store_dir).encode()).hexdigest()[:12] + ":"
        return RedisClusterBroker(self.url, prefix=prefix, **options)


def test_a_feed_follows_a_user_whose_slot_moved(own_cluster: RedisCluster) -> None:
    """A subscription Redis drops when its slot moves to another primary is made there; nothing is lost."""
    broker = RedisClusterBroker(own_cluster.url, prefix="mv:")
    publisher = RedisClusterBroker(own_cluster.url, prefix="mv:")
    feed = Feed()
    listen(broker, feed, ["alice"])
    try:
        before = publisher.publish("alice", payload(1))
        feed.wait_count(1)
        key = "mv:{alice}:log"
        source = own_cluster.primary_of(key)
        target = next(n for n in own_cluster.nodes if n is not source and own_cluster.role(n) == "master")
        own_cluster.move_slot(key, target)
        after = [publisher.publish("alice", payload(n)) for n in range(2, 5)]
        assert feed.wait_count(4) == [before, *after]
        assert broker._followed["alice"].shard.name == f"127.0.0.1:{target.port}"  # type: ignore[union-attr]
    finally:
        publisher.close()
        broker.close()


def test_a_publish_waits_for_a_replica_and_says_when_none_answered(own_cluster: RedisCluster) -> None:
    """With ``replicas=1`` a write is acknowledged once a replica has it; a shard without one answers 503."""
    broker = RedisClusterBroker(own_cluster.url, prefix="wr:", wait_ms=200)
    try:
        broker.publish("alice", payload(1))
        primary = own_cluster.primary_of("wr:{alice}:log")
        replica = next(
            n for n in own_cluster.nodes if own_cluster.role(n) == "slave" and _replica_of(n) == primary.port
        )
        replica.stop()
        with pytest.raises(BrokerUnavailable, match="0 of 1 replica"):
            broker.publish("alice", payload(2))
        relaxed = RedisClusterBroker(own_cluster.url, prefix="wr:", replicas=0)
        try:
            assert relaxed.publish("alice", payload(3)).id > 0
        finally:
            relaxed.close()
    finally:
        broker.close()


def _replica_of(node: t.Any) -> int:
    """The port of the primary a replica follows."""
    import redis

    return int(redis.Redis(port=node.port, socket_timeout=2).info("replication")["master_port"])


def test_a_feed_unsubscribes_a_user_after_the_linger(redis_cluster: RedisCluster) -> None:
    """The last stream of a user closed: after ``linger`` the worker's feed stops getting its notices."""
    broker = RedisClusterBroker(redis_cluster.url, prefix="lg:", linger=0.2)
    publisher = RedisClusterBroker(redis_cluster.url, prefix="lg:")
    feed = Feed()
    listen(broker, feed, ["alice", "bob"])
    try:
        first = publisher.publish("alice", payload(1))
        feed.wait_count(1)
        broker.unfollow("alice")
        wait_for(lambda: "alice" not in broker._followed, 5, "the feed to leave alice")
        publisher.publish("alice", payload(2))
        last = publisher.publish("bob", payload(3))
        assert feed.wait_count(2) == [first, last]
        time.sleep(0.2)
        assert feed.notices == [first, last]  # alice's second notice never came
    finally:
        publisher.close()
        broker.close()
