"""Fixtures shared by every test module: apps, real gunicorn and redis-server processes, a browser."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from sse_notify.service import get_state

from .browser import VIEWPORT, launch_chromium
from .receivers import WEBHOOK_SECRET, SMTPServer, WebhookReceiver
from .support import PUBLISH_KEY, PostgresServer, RedisCluster, RedisServer, Server, standalone_app


@pytest.fixture(name="app")
def _app(tmp_path: Path) -> Flask:
    """The standalone app on a fresh SQLite store, with the test secret and publish key."""
    return standalone_app(f"sqlite:///{tmp_path}/notices.sqlite3")


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

    def make(
        workers: int = 1,
        store: str | None = None,
        app: str = "wsgi:app",
        config: str | None = None,
        health_path: str = "/healthz",
        **env: str,
    ) -> Server:
        """``config``: a gunicorn config file; ``health_path``: the app's health check URL."""
        server = Server(
            store or str(tmp_path / "notices.sqlite3"),
            workers=workers,
            env=env,
            app=app,
            config=config,
            health_path=health_path,
            log_dir=tmp_path,
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


@pytest.fixture(name="redis_cluster", scope="session")
def _redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisCluster]:
    """One Redis Cluster (three primaries, three replicas) for the session (tests keep apart by prefix)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(name="own_cluster")
def _own_cluster(tmp_path: Path) -> t.Iterator[RedisCluster]:
    """A Redis Cluster of this test's own, whose nodes it may kill and whose slots it may move."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture(name="postgres_server", scope="session")
def _postgres_server() -> t.Iterator[PostgresServer]:
    """One PostgreSQL for the whole session (tests keep apart by database)."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(name="own_postgres")
def _own_postgres() -> t.Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, which it may stop and restart."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(name="own_redis")
def _own_redis(tmp_path: Path) -> t.Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(name="smtp")
def _smtp() -> t.Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on loopback, which the test may stop and start."""
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture(name="webhook")
def _webhook() -> t.Iterator[WebhookReceiver]:
    """A webhook receiver that verifies every signature with the standardwebhooks package."""
    receiver = WebhookReceiver(WEBHOOK_SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture(name="browser", scope="module")
def _browser() -> t.Iterator[Browser]:
    """The system Chromium, headless, for a module's browser tests."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(name="context")
def _context(browser: Browser) -> t.Iterator[BrowserContext]:
    """A fresh browser context (its own cookies and storage) at the tests' viewport."""
    context = browser.new_context(viewport=VIEWPORT)
    yield context
    context.close()


@pytest.fixture(name="reader_app", scope="module")
def _reader_app() -> Flask:
    """One app for the token matrix (every refused stream leaves nothing behind)."""
    return standalone_app()


@pytest.fixture(name="reader")
def _reader(reader_app: Flask) -> t.Iterator[FlaskClient]:
    """A test client with no credentials at all (a browser's EventSource)."""
    yield reader_app.test_client()
    assert get_state(reader_app).hub.stats()["streams"] == 0, "a stream was left open"
