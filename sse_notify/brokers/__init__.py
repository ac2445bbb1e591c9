"""Notice stores behind one interface, chosen by URL.

==========================  ==================================================
``sqlite:///name.sqlite3``  default; a file in Flask's instance folder
                            (``sqlite:////abs/path`` for an absolute path),
                            shared by every worker on the host, durable
``memory://``               this process only, nothing survives a restart
``redis://host:6379/0``     Redis (``rediss://`` for TLS; ``?prefix=app1:`` to
                            share a server), for several hosts; needs the
                            ``[redis]`` extra
``redis+cluster://h:p,h:p``  Redis Cluster (``rediss+cluster://`` for TLS;
                            ``?replicas=1`` to wait for before answering), its
                            shards sharing storage and delivery; ``[redis]`` extra
``postgresql://u@host/db``  PostgreSQL (``?pool_size=4``; every libpq option),
                            for several hosts; needs the ``[postgres]`` extra
==========================  ==================================================
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError
from .base import Broker, FeedHandler, Replay
from .memory import MemoryBroker
from .sqlite import SQLiteBroker

__all__ = ["Broker", "FeedHandler", "MemoryBroker", "Replay", "SQLiteBroker", "make_broker"]


def make_broker(
    url: str,
    *,
    base_dir: str = ".",
    retention_count: int = 1000,
    retention_age: float = 7 * 86400,
    poll_interval: float = 1.0,
) -> Broker:
    """Build the store named by ``url``.

    :param base_dir: where a relative ``sqlite:///`` path lives (the instance folder).
    :raises ConfigError: for an unknown scheme or a malformed URL.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(f"SSE_NOTIFY_BROKER_URL must look like scheme://..., got {url!r}")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryBroker(retention_count=retention_count, retention_age=retention_age)
    if scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc:
            raise ConfigError(
                f"SQLite URL {url!r} has a host; use sqlite:///relative/path or sqlite:////absolute/path"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ConfigError(f"SQLite URL {url!r} names no file")
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        blank = sorted(k for k, v in options.items() if not v)
        if blank:
            raise ConfigError(f"SQLite URL option(s) without a value: {', '.join(blank)}")
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ConfigError(f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}")
        try:
            return SQLiteBroker(
                os.path.join(base_dir, path),
                retention_count=retention_count,
                retention_age=retention_age,
                poll_interval=poll_interval,
                synchronous=options.get("synchronous", "NORMAL"),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        # Every other query option (ssl_cert_reqs=, ...) is redis-py's own.
        rest, ours = _own_options(url, {"prefix", "linger"})
        prefix = ours.get("prefix", "sse_notify:")
        if not prefix:
            raise ConfigError("the Redis URL option prefix= must not be empty")
        return RedisBroker(
            rest,
            prefix=prefix,
            linger=_linger(ours),
            retention_count=retention_count,
            retention_age=retention_age,
            poll_interval=poll_interval,
        )
    if scheme in ("redis+cluster", "rediss+cluster"):
        from .cluster import RedisClusterBroker, parse_cluster_url

        _, _, query = parse_cluster_url(url)
        unknown = set(query) - {"prefix", "linger", "replicas", "wait_ms"}
        if unknown:
            raise ConfigError(f"unknown Redis Cluster URL option(s): {', '.join(sorted(unknown))}")
        prefix = query.get("prefix", "sse_notify:")
        if not prefix:
            raise ConfigError("the Redis Cluster URL option prefix= must not be empty")
        for name in ("replicas", "wait_ms"):
            if not query.get(name, "0").isdigit():
                raise ConfigError(
                    f"{name}= in the Redis Cluster URL must be a whole number, got {query[name]!r}"
                )
        return RedisClusterBroker(
            url,
            prefix=prefix,
            linger=_linger(query),
            replicas=int(query.get("replicas", "1")),
            wait_ms=int(query.get("wait_ms", "1000")) or 1,
            retention_count=retention_count,
            retention_age=retention_age,
            poll_interval=poll_interval,
        )
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBroker

        # Every other query option (sslmode=, application_name=, ...) is libpq's own.
        rest, ours = _own_options(url, {"pool_size"})
        size = ours.get("pool_size", "4")
        if not size.isdigit() or int(size) < 1:
            raise ConfigError(f"pool_size= in the PostgreSQL URL must be a positive number, got {size!r}")
        return PostgresBroker(
            rest,
            pool_size=int(size),
            retention_count=retention_count,
            retention_age=retention_age,
            poll_interval=poll_interval,
        )
    raise ConfigError(
        f"unknown store {scheme}:// in SSE_NOTIFY_BROKER_URL; this version supports sqlite://, memory://, "
        "redis:// (rediss://), redis+cluster:// and postgresql://"
    )


def _linger(options: dict[str, str]) -> float:
    """The ``linger=`` of a Redis URL: seconds a worker stays subscribed after its last stream of a user."""
    try:
        linger = float(options.get("linger", "10"))
    except ValueError:
        linger = -1.0
    if not 0 <= linger < float("inf"):
        raise ConfigError(f"linger= in the Redis URL must be a number of seconds, got {options['linger']!r}")
    return linger


def _own_options(url: str, names: set[str]) -> tuple[str, dict[str, str]]:
    """``url`` without the query options that are ours (``names``), and their values (the last of each)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in names}
    rest = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in names])))
    return rest, ours
