"""examples/orders under a real ``gunicorn -k gevent`` (2 workers): an order and its notice commit together.

On the orders' own PostgreSQL the notice is written in the order's transaction; on SQLite it is
published after the commit. Either way a stream gets the notice of each order that committed, and
nothing for one that rolled back.
"""

from __future__ import annotations

import hashlib
import typing as t
from pathlib import Path

import httpx
import pytest

from .sse_client import subscribe
from .support import PostgresServer, Server

pytestmark = pytest.mark.server


@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_a_stream_gets_the_orders_that_committed_and_nothing_else(
    store: str, make_server: t.Callable[..., Server], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two orders commit, one between them fails: the buyer's stream gets exactly the two, in order."""
    env: dict[str, str] = {}
    url = None
    if store == "postgresql":
        url = postgres_server.new_database("o" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12])
        env["ORDERS_DATABASE_URL"] = url.replace("postgresql://", "postgresql+psycopg://")
    app = f"examples.orders:create_app({str(tmp_path / 'instance')!r})"
    server = make_server(workers=2, store=url, app=app, **env)
    token = httpx.get(f"{server.url}/token/ann", timeout=10).json()["token"]
    stream = subscribe(f"{server.url}/connection/ann?token={token}")
    try:
        placed = []
        for item, fail in (("book", False), ("pen", True), ("lamp", False)):
            answer = httpx.post(
                f"{server.url}/orders", json={"user_id": "ann", "item": item, "fail": fail}, timeout=10
            )
            assert answer.status_code == (500 if fail else 201), answer.text
            if not fail:
                placed.append(answer.json())
                assert answer.json()["notified"] == (
                    "in the transaction" if store == "postgresql" else "after the commit"
                )
        got = stream.notices(2)
        assert [n.json()["data"]["order_id"] for n in got] == [o["id"] for o in placed]
        stream.nothing(0.5)
    finally:
        stream.close()
