"""Who may publish: publish keys (several at once, for rotation), and secrets that are safe by default."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from sse_notify import ConfigError
from sse_notify.auth import issue_token, verify_token
from sse_notify.service import get_state

from .support import AUTH, SECRET, assert_json_error, embed, head, open_stream, standalone_app, token_for

KEYS = ("k1", "k2")


@pytest.fixture(name="rotation")
def _rotation() -> Flask:
    """An app with two publish keys configured at once (key rotation)."""
    return standalone_app(SSE_NOTIFY_PUBLISH_KEYS=list(KEYS))


# -- 2. publishers -----------------------------------------------------------

ENDPOINTS = [
    pytest.param("/users/alice/notices", {"n": 1}, 201, id="notices"),
    pytest.param("/broadcast", {"n": 1}, 201, id="broadcast"),
    pytest.param("/notices", [{"user_id": "alice", "data": {"n": 1}}], 201, id="batch"),
    pytest.param("/users/alice/tokens", None, 201, id="tokens"),
    pytest.param("/users/alice/kick", None, 202, id="kick"),
]

REFUSED = [
    pytest.param({}, "", 401, "unauthorized", id="no-key"),
    pytest.param({"Authorization": "Bearer wrong"}, "", 403, "forbidden", id="wrong-key"),
    pytest.param({"Authorization": "Bearer k"}, "", 403, "forbidden", id="prefix-of-a-key"),
    pytest.param({"Authorization": "Bearer k1k2"}, "", 403, "forbidden", id="keys-joined"),
    pytest.param({"Authorization": f"Bearer {token_for('alice')}"}, "", 403, "forbidden", id="stream-token"),
    pytest.param({"Authorization": "Basic k1"}, "", 401, "unauthorized", id="basic-scheme"),
    pytest.param({"Authorization": "k1"}, "", 401, "unauthorized", id="no-scheme"),
    pytest.param({"Authorization": "Bearer "}, "", 401, "unauthorized", id="empty-bearer"),
    pytest.param({}, "?key=k1", 401, "unauthorized", id="key-in-query"),
    pytest.param({}, "?token=k1", 401, "unauthorized", id="key-as-token-param"),
]


@pytest.mark.parametrize(("path", "body", "ok"), ENDPOINTS)
@pytest.mark.parametrize(("headers", "query", "status", "error"), REFUSED)
def test_publisher_refused(
    rotation: Flask,
    path: str,
    body: t.Any,
    ok: int,
    headers: dict[str, str],
    query: str,
    status: int,
    error: str,
) -> None:
    """Each write endpoint: 401 (+ WWW-Authenticate) without a key, 403 with a wrong one; nothing stored."""
    response = rotation.test_client().post(path + query, json=body, headers=headers)
    assert_json_error(response, status, error)
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="sse_notify"'
    assert head(rotation) == 0, "a refused publish stored something"


@pytest.mark.parametrize(("path", "body", "ok"), ENDPOINTS)
@pytest.mark.parametrize("authorization", ["Bearer k1", "Bearer k2", "bearer k2", "Bearer  k1 "])
def test_publisher_accepted_with_every_configured_key(
    rotation: Flask, path: str, body: t.Any, ok: int, authorization: str
) -> None:
    """Each configured key (rotation: k1 and k2) is accepted by every write endpoint."""
    response = rotation.test_client().post(path, json=body, headers={"Authorization": authorization})
    assert response.status_code == ok, response.data
    if path.endswith("/tokens"):
        assert verify_token(SECRET, response.get_json()["token"], "alice").user_id == "alice"
        assert head(rotation) == 0
    elif path.endswith("/kick"):
        assert response.get_json() == {"user_id": "alice", "kicked": True}
        assert head(rotation) == 0  # a control record: no notice stored
    else:
        assert head(rotation) == 1


# -- 3. secure by default ----------------------------------------------------


def test_first_run_generates_secrets_and_still_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No SECRET_KEY, no publish keys: secrets are generated (0600, shared), and nothing is open to anyone."""
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING, logger="sse_notify.security"):
        app = embed(instance, secure=False)
    assert "development mode" in caplog.text
    assert str(instance) in caplog.text
    secret_file, key_file = instance / "secret_key", instance / "publish_key"
    for path in (secret_file, key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert len(path.read_text().strip()) >= 32
    secret, key = secret_file.read_text().strip(), key_file.read_text().strip()
    assert secret != key
    security = get_state(app).security
    assert (security.secret, security.publish_keys) == (secret, (key,))

    client = app.test_client()
    assert_json_error(client.get("/connection/alice"), 401, "unauthorized")
    assert_json_error(client.get(f"/connection/alice?token={token_for('alice')}"), 401, "invalid_token")
    assert_json_error(client.post("/users/alice/notices", json={"n": 1}), 401, "unauthorized")
    assert_json_error(client.post("/users/alice/notices", json={"n": 1}, headers=AUTH), 403, "forbidden")
    assert head(app) == 0
    # The generated ones work.
    published = client.post("/users/alice/notices", json={"n": 1}, headers={"Authorization": f"Bearer {key}"})
    assert published.status_code == 201
    response, chunks = open_stream(client, f"/connection/alice?token={issue_token(secret, 'alice', 60)}")
    assert response.status_code == 200
    assert next(chunks).startswith(b": connected")
    response.close()

    # Another worker (another app on the same instance folder) uses the same values.
    again = get_state(embed(instance, secure=False)).security
    assert (again.secret, again.publish_keys) == (secret, (key,))
    assert sorted(p.name for p in instance.iterdir()) == ["publish_key", "secret_key"]


RACE = """
import sys, time
from sse_notify.security import instance_secret
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(instance_secret(sys.argv[1], "secret_key"))
"""


def test_workers_starting_at_once_share_one_secret(tmp_path: Path) -> None:
    """Workers making the instance secret at the same moment all end up with the same value."""
    instance = tmp_path / "instance"
    start_at = str(time.time() + 2)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(instance), start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    outs = [process.communicate(timeout=15) for process in processes]
    values = {out.decode().strip() for out, _ in outs}
    assert [process.returncode for process in processes] == [0] * 6, [err.decode() for _, err in outs]
    assert values == {(instance / "secret_key").read_text().strip()}
    assert [p.name for p in instance.iterdir()] == ["secret_key"], "a temporary file was left"


@pytest.mark.parametrize(
    ("config", "named"),
    [
        pytest.param({"SSE_NOTIFY_PUBLISH_KEYS": ["k1"]}, ["FLASK_SECRET_KEY"], id="no-secret"),
        pytest.param({"SECRET_KEY": SECRET}, ["SSE_NOTIFY_PUBLISH_KEYS"], id="no-publish-keys"),
        pytest.param({}, ["FLASK_SECRET_KEY", "SSE_NOTIFY_PUBLISH_KEYS"], id="neither"),
    ],
)
@pytest.mark.parametrize("production", [True, "true"])
def test_production_refuses_to_start_without_real_secrets(
    tmp_path: Path, config: dict[str, t.Any], named: list[str], production: t.Any
) -> None:
    """SSE_NOTIFY_PRODUCTION=true without SECRET_KEY or publish keys is a ConfigError naming what to set."""
    instance = tmp_path / "instance"
    with pytest.raises(ConfigError, match="SSE_NOTIFY_PRODUCTION") as raised:
        embed(instance, secure=False, SSE_NOTIFY_PRODUCTION=production, **config)
    for name in named:
        assert name in str(raised.value)
    assert not (instance / "secret_key").exists()
    assert not (instance / "publish_key").exists()


def test_production_starts_with_real_secrets(tmp_path: Path) -> None:
    """SSE_NOTIFY_PRODUCTION=true with both set starts, generates nothing, and is not in development mode."""
    instance = tmp_path / "instance"
    app = embed(instance, SSE_NOTIFY_PRODUCTION=True)
    assert not get_state(app).security.development
    assert not (instance / "secret_key").exists()
    assert not (instance / "publish_key").exists()


def test_auth_none_opens_everything_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SSE_NOTIFY_AUTH=none: anyone reads and publishes, and a loud warning is logged at start."""
    with caplog.at_level(logging.WARNING, logger="sse_notify.security"):
        app = embed(tmp_path / "instance", SSE_NOTIFY_AUTH="none")
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "authentication is OFF" in r.message
    ]
    assert warnings, caplog.text
    client = app.test_client()
    assert client.post("/users/alice/notices", json={"n": 1}).status_code == 201
    assert client.post("/users/alice/kick").status_code == 202
    response, chunks = open_stream(client, "/connection/alice")
    assert response.status_code == 200
    assert next(chunks).startswith(b": connected")
    response.close()
