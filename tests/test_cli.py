"""``flask --app wsgi notify`` and ``broadcast``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

from sse_notify.service import get_state

from .support import ROOT


def test_notify_prints_the_stored_notice(runner: FlaskCliRunner, app: Flask) -> None:
    """`notify USER JSON` stores a notice for USER and prints it as JSON."""
    result = runner.invoke(args=["notify", "alice", '{"title": "hi"}'])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["user_id"] == "alice"
    assert printed["data"] == {"title": "hi"}
    assert get_state(app).broker.replay("alice", "0").notices[0].id == printed["id"]


def test_broadcast_command(runner: FlaskCliRunner) -> None:
    """`broadcast JSON` stores a notice for everyone."""
    result = runner.invoke(args=["broadcast", '{"x": 1}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["user_id"] is None


def test_bad_input_exits_with_usage_error(runner: FlaskCliRunner) -> None:
    """Invalid JSON, a non-object or a bad user id exits non-zero with a message, storing nothing."""
    for args, message in [
        (["notify", "alice", "{x"], "not valid JSON"),
        (["notify", "alice", "[1]"], "must be a JSON object"),
        (["notify", "a b", "{}"], "user_id must be"),
    ]:
        result = runner.invoke(args=args)
        assert result.exit_code != 0
        assert message in result.output


def test_real_cli_reaches_the_same_store(tmp_path: Path) -> None:
    """The documented command line, `flask --app wsgi notify`, runs from the repository root."""
    env = dict(os.environ, SSE_NOTIFY_BROKER_URL=f"sqlite:///{tmp_path}/n.sqlite3")
    flask = str(Path(sys.executable).parent / "flask")
    out = subprocess.run(
        [flask, "--app", "wsgi", "notify", "alice", '{"a": 1}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out)["data"] == {"a": 1}


def test_token_command_prints_a_working_token(runner: FlaskCliRunner, app: Flask) -> None:
    """`token USER --ttl N` prints a token that opens USER's stream, and only theirs."""
    from sse_notify.auth import verify_token
    from sse_notify.errors import Forbidden

    result = runner.invoke(args=["token", "alice", "--ttl", "60"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    grant = verify_token(get_state(app).security.secret, token, "alice")
    assert 50 < grant.expires_at - __import__("time").time() <= 61
    with pytest.raises(Forbidden):
        verify_token(get_state(app).security.secret, token, "bob")
    assert runner.invoke(args=["token", "a b"]).exit_code != 0
