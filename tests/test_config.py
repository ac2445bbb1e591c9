"""Settings: defaults, environment, validation, and the README table."""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest

from sse_notify import ConfigError, create_app
from sse_notify.config import DEFAULTS, Settings, load_env

from .support import ROOT, host_app


def test_create_app_defaults_to_sqlite_in_the_instance_folder(tmp_path: t.Any) -> None:
    """With no settings, the store is a SQLite file in Flask's instance folder, and the app is not testing."""
    app = create_app({"SSE_NOTIFY_BROKER_URL": DEFAULTS["SSE_NOTIFY_BROKER_URL"]})
    broker = app.extensions["sse_notify"].broker
    assert broker.path == f"{app.instance_path}/sse_notify.sqlite3"
    assert not app.testing


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any) -> None:
    """SSE_NOTIFY_* environment variables set the settings, parsed as JSON when they parse."""
    monkeypatch.setenv("SSE_NOTIFY_HEARTBEAT", "2.5")
    monkeypatch.setenv("SSE_NOTIFY_BROKER_URL", f"sqlite:///{tmp_path}/env.sqlite3")
    app = create_app()
    state = app.extensions["sse_notify"]
    assert state.settings.heartbeat == 2.5
    assert state.broker.path == f"{tmp_path}/env.sqlite3"


def test_load_env_keeps_text_that_is_not_json() -> None:
    """Values that are not JSON stay strings; other prefixes are ignored."""
    config: dict[str, t.Any] = {}
    load_env(config, {"SSE_NOTIFY_BROKER_URL": "memory://", "SSE_NOTIFY_RETRY": "500", "OTHER": "x"})
    assert config == {"SSE_NOTIFY_BROKER_URL": "memory://", "SSE_NOTIFY_RETRY": 500}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SSE_NOTIFY_HEARTBEAT", "soon", "must be a number"),
        ("SSE_NOTIFY_HEARTBEAT", 0, "positive"),
        ("SSE_NOTIFY_RETRY", -1, "positive"),
        ("SSE_NOTIFY_MAX_BATCH", True, "positive"),
        ("SSE_NOTIFY_BROKER_URL", "", "non-empty"),
        ("SSE_NOTIFY_BROKER_URL", "mysql://x", "unknown store"),
        ("SSE_NOTIFY_BROKER_URL", "nonsense", "scheme://"),
    ],
)
def test_bad_settings_refuse_to_start(key: str, value: t.Any, message: str) -> None:
    """A wrong setting stops the app at start with a ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=message):
        create_app({key: value, "SSE_NOTIFY_BROKER_URL": "memory://"} | {key: value})


def test_settings_cover_every_default() -> None:
    """Every default has a Settings field and the other way round."""
    settings = Settings.from_config(DEFAULTS)
    assert {f"SSE_NOTIFY_{name.upper()}" for name in vars(settings)} == set(DEFAULTS)


def test_readme_table_lists_every_setting_with_its_default() -> None:
    """The README's configuration table has exactly the settings of config.DEFAULTS, with those defaults."""
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(SSE_NOTIFY_[A-Z_]+)` \| `([^`]*)` \|", readme, flags=re.M))
    assert set(rows) == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        assert rows[key] == (str(default) if default != "" else '""'), key  # an empty string shows as ""


def test_readme_python_example_runs(app: t.Any) -> None:
    """The README's Python example runs as written inside an app context."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "notify(" in b]
    with app.app_context():
        exec(compile(block, "README.md", "exec"), {})
    state = app.extensions["sse_notify"]
    assert [n.user_id for n in state.broker.replay("alice", "0").notices][:1] == ["alice"]


@pytest.mark.parametrize("raw", ["notify", "/no spaces", "/a?b", "//x"])
def test_url_prefix_must_be_a_path(raw: str) -> None:
    """SSE_NOTIFY_URL_PREFIX is empty or a path of plain segments; anything else names the key."""
    with pytest.raises(ConfigError, match="SSE_NOTIFY_URL_PREFIX"):
        Settings.from_config({**DEFAULTS, "SSE_NOTIFY_URL_PREFIX": raw})


def test_url_prefix_from_config_mounts_the_endpoints(tmp_path: Path) -> None:
    """With SSE_NOTIFY_URL_PREFIX set, the endpoints live under it and the root has none of them."""

    from sse_notify import SSENotify

    app = host_app(tmp_path, SSE_NOTIFY_URL_PREFIX="/notify/")
    SSENotify(app)
    client = app.test_client()
    assert client.get("/notify/openapi.json").status_code == 200
    assert client.get("/openapi.json").status_code == 404
    assert app.extensions["sse_notify"].url_prefix == "/notify"


def test_readme_embedding_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's embedding example builds an app whose hook lets in only the signed-in user."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "init_app(app)" in b]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLASK_SECRET_KEY", "s" * 32)
    monkeypatch.setenv("SSE_NOTIFY_BROKER_URL", "memory://")
    namespace: dict[str, t.Any] = {"__name__": "host_app"}
    exec(compile(block, "README.md", "exec"), namespace)
    app = namespace["create_app"]()
    app.config["TESTING"] = True
    client = app.test_client()
    assert client.get("/notify/openapi.json").status_code == 200
    assert client.get("/notify/users/alice/presence").status_code == 403  # not signed in: the hook says no
    with client.session_transaction() as session:
        session["user"] = "alice"
    assert client.get("/notify/users/alice/presence").get_json()["online"] is False
    assert client.get("/notify/users/bob/presence").status_code == 403
    assert app.extensions["sse_notify"].settings.broker_url == "memory://"
