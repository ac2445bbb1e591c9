"""``make_broker``: the store named by a URL, or a ConfigError that says what is wrong with it."""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sse_notify import brokers
from sse_notify.brokers import Broker, MemoryBroker, SQLiteBroker
from sse_notify.errors import ConfigError

from .contract import payload


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


def test_make_broker_redis_options() -> None:
    """?prefix= and ?linger= are the store's; every other option goes to redis-py unchanged."""
    broker = brokers.make_broker("redis://localhost:1/2?prefix=app1:&linger=2.5&socket_keepalive=true")
    assert (broker.prefix, broker.linger) == ("app1:", 2.5)  # type: ignore[attr-defined]
    assert broker.url == "redis://localhost:1/2?socket_keepalive=true"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/0", "unknown store mysql://"),
        ("postgresql://db/x?pool_size=0", "pool_size= in the PostgreSQL URL"),
        ("postgresql://db/x?pool_size=many", "pool_size= in the PostgreSQL URL"),
        ("redis://localhost/0?linger=soon", "linger= in the Redis URL"),
        ("redis://localhost/0?linger=-1", "linger= in the Redis URL"),
        ("redis://localhost/0?linger=inf", "linger= in the Redis URL"),
        ("redis://localhost/0?prefix=", "prefix= must not be empty"),
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
