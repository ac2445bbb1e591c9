"""``redis://``: the contract against a real redis-server (the session's), and what only Redis has."""

from __future__ import annotations

import hashlib
import typing as t
from pathlib import Path

import pytest

from sse_notify.brokers import Broker
from sse_notify.brokers.redis import RedisBroker

from ..support import RedisServer
from .contract import Feed, InboxDurableContract, payload


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
