"""Scenario ``stores``: publishing on SQLite, PostgreSQL and Redis, side by side in one run (issue #16).

Each store is served by one ``gunicorn -k gevent -w 1`` worker, with its server started here on a
free port and set as a production user would run it:

- **SQLite**: the default file, WAL, ``synchronous=NORMAL``;
- **PostgreSQL**: a fresh ``initdb`` cluster with its defaults (``fsync`` and
  ``synchronous_commit`` on), the store's pool of 4;
- **Redis**: ``appendonly yes``, ``appendfsync everysec`` (docs/PRODUCTION.md's recommendation).

Two figures per store, ``ab -k -c 32`` as in ``limit``, the stores alternating run by run (this
machine is noisy), medians over the runs:

- **one per POST**: one notice per ``POST /users/alice/notices``;
- **batched**: ``POST /notices`` with 100 notices for 100 users, as notices per second;
- **new streams**: ``--streams`` streams of as many users opened at once (:class:`~bench.loadgen.LoadGen`),
  per second from the first dial until the last answer. On Redis each is a user's first stream
  in the worker: the worker subscribes to the user's channel before the stream answers.

Loopback only; every server started here is stopped by PID.
"""

from __future__ import annotations

import statistics
import tempfile
import typing as t
from pathlib import Path

from bench.limit import _ab, _connect, _Server, setup
from sse_notify.notices import dumps

__all__ = ["STORES", "render_stores", "stores"]

#: The stores compared, in the order of the table.
STORES = ("sqlite", "postgresql", "redis")
#: Notices per batched request.
BATCH = 100


def _start(name: str, tmp: str) -> tuple[str, t.Callable[[], None]]:
    """Start the store's own server (none for SQLite); its URL and how to stop it."""
    from tests.support import PostgresServer, RedisServer

    if name == "sqlite":
        return f"sqlite:///{tmp}/notices.sqlite3", lambda: None
    if name == "postgresql":
        postgres = PostgresServer().start()
        return postgres.new_database("bench"), postgres.remove
    redis = RedisServer(Path(tmp) / "redis", appendfsync="everysec").start()
    return redis.url, redis.stop


def stores(runs: int, requests: int, streams: int = 2000) -> dict[str, t.Any]:
    """Run the three figures for each store ``runs`` times, alternating their order; medians."""
    _secret, key, env, tokens = setup(streams)
    rates: dict[str, list[float]] = {f"{s}_{f}": [] for s in STORES for f in ("one", "batch", "connect")}
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "notice.json"
        one.write_text('{"title":"Build finished","text":"main is green","n":1}')
        batch = Path(tmp) / "batch.json"
        batch.write_bytes(
            dumps(
                [{"user_id": f"user-{i}", "data": {"title": "Build finished", "n": i}} for i in range(BATCH)]
            ).encode()
        )
        for run in range(runs):
            order = STORES[run % len(STORES) :] + STORES[: run % len(STORES)]
            for name in order:
                folder = f"{tmp}/{name}-{run}"
                Path(folder).mkdir()
                url, stop = _start(name, folder)
                server = _Server("wsgi:app", {**env, "SSE_NOTIFY_BROKER_URL": url})
                try:
                    target = f"{server.url}/users/alice/notices"
                    _ab(target, max(500, requests // 10), key, one)  # warm-up
                    rates[f"{name}_one"].append(_ab(target, requests, key, one))
                    many = max(50, requests // BATCH)
                    rates[f"{name}_batch"].append(_ab(f"{server.url}/notices", many, key, batch) * BATCH)
                    rates[f"{name}_connect"].append(_connect(lambda i: tokens[i], server.port, streams))
                finally:
                    server.stop()
                    stop()
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    return {
        "scenario": "stores",
        "runs": runs,
        "requests": requests,
        "batch": BATCH,
        "streams": streams,
        **{f"{name}_per_s": value for name, value in medians.items()},
        "all": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def render_stores(result: dict[str, t.Any]) -> str:
    """The Markdown table of a ``stores`` run."""
    sqlite_one, sqlite_batch = result["sqlite_one_per_s"], result["sqlite_batch_per_s"]
    sqlite_connect = result["sqlite_connect_per_s"]
    lines = [
        "| store | one per POST [/s] | vs SQLite | batched, 100 per POST [notices/s] | vs SQLite "
        f"| new streams, {result['streams']:,} users [/s] | vs SQLite |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in STORES:
        one, batch = result[f"{name}_one_per_s"], result[f"{name}_batch_per_s"]
        connect = result[f"{name}_connect_per_s"]
        lines.append(
            f"| {name} | {one:,.0f} | {one / sqlite_one:.2f}x | {batch:,.0f} | {batch / sqlite_batch:.2f}x "
            f"| {connect:,.0f} | {connect / sqlite_connect:.2f}x |"
        )
    return "\n".join(lines)
