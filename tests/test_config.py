"""Settings: defaults, environment, validation, and the README table."""

from __future__ import annotations

import re
import typing as t

import pytest

from sse_notify import ConfigError, create_app
from sse_notify.config import DEFAULTS, Settings, load_env

from .support import ROOT


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
        ("SSE_NOTIFY_BROKER_URL", "postgres://x", "unknown store"),
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
        assert rows[key] == str(default), key


def test_readme_python_example_runs(app: t.Any) -> None:
    """The README's Python example runs as written inside an app context."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "notify(" in b]
    with app.app_context():
        exec(compile(block, "README.md", "exec"), {})
    state = app.extensions["sse_notify"]
    assert [n.user_id for n in state.broker.replay("alice", "0").notices][:1] == ["alice"]
