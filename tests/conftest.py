"""Fixtures: an app on the memory store, and real gunicorn servers on fresh SQLite stores."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from sse_notify import create_app

from .support import PUBLISH_KEY, SECRET, RedisServer, Server


@pytest.fixture(name="app")
def _app(tmp_path: Path) -> Flask:
    return create_app(
        {
            "TESTING": True,
            "SSE_NOTIFY_BROKER_URL": f"sqlite:///{tmp_path}/notices.sqlite3",
            "SSE_NOTIFY_HEARTBEAT": 0.2,
            "SECRET_KEY": SECRET,
            "SSE_NOTIFY_PUBLISH_KEYS": [PUBLISH_KEY],
        }
    )


@pytest.fixture(name="client")
def _client(app: Flask) -> FlaskClient:
    """A test client that sends the publish key (streams still need their own token)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {PUBLISH_KEY}"
    return client


@pytest.fixture(name="runner")
def _runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture(name="make_server")
def _make_server(tmp_path: Path) -> t.Iterator[t.Callable[..., Server]]:
    """Start real gunicorn servers; every one is stopped by PID at the end."""
    started: list[Server] = []

    def make(workers: int = 1, store: str | None = None, app: str = "wsgi:app", **env: str) -> Server:
        server = Server(
            store or str(tmp_path / "notices.sqlite3"), workers=workers, env=env, app=app, log_dir=tmp_path
        )
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop(timeout=15)


@pytest.fixture(name="live_server")
def _live_server(make_server: t.Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture(name="redis_server", scope="session")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisServer]:
    """One redis-server for the whole session (tests keep apart by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(name="own_redis")
def _own_redis(tmp_path: Path) -> t.Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
