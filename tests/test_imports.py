"""The pure modules stay pure: loading them pulls in no web framework, event loop or store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "sse_notify"

#: Top-level modules a pure module must never import. ``sse_notify`` itself is on the list
#: because its ``__init__`` imports Flask: reaching it would make the check meaningless.
FORBIDDEN = ("flask", "werkzeug", "gevent", "greenlet", "redis", "sqlite3", "_sqlite3", "sse_notify")

#: Runs in a fresh interpreter; argv[1] is the module file, argv[2] the forbidden names as JSON.
PROBE = r"""
import importlib.abc
import importlib.util
import json
import os
import shutil
import pathlib
import sys
import types

path = pathlib.Path(sys.argv[1])
forbidden = set(json.loads(sys.argv[2]))

def top(name):
    return name.partition(".")[0]

preloaded = sorted(n for n in sys.modules if top(n) in forbidden)
before = set(sys.modules)
attempted = []

class Recorder(importlib.abc.MetaPathFinder):
    # Sees every import that is not already in sys.modules, even one inside try/except.
    def find_spec(self, name, path=None, target=None):
        attempted.append(name)
        return None

sys.meta_path.insert(0, Recorder())

# A stand-in package whose __path__ is the real folder, so relative imports still resolve to the
# real sibling files, but sse_notify/__init__.py (which imports Flask) never runs.
package = types.ModuleType("_pure_probe")
package.__path__ = [str(path.parent)]
sys.modules["_pure_probe"] = package
name = "_pure_probe." + path.stem
spec = importlib.util.spec_from_file_location(name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module  # dataclasses look their module up here
spec.loader.exec_module(module)

print(json.dumps({
    "preloaded": preloaded,
    "attempted": sorted({n for n in attempted if top(n) in forbidden}),
    "loaded": sorted(n for n in set(sys.modules) - before if top(n) in forbidden),
    "public": sorted(getattr(module, "__all__", [])),
}))
"""


def _probe(path: Path) -> dict[str, list[str]]:
    """Load ``path`` in a fresh isolated interpreter and report which forbidden modules it touched."""
    result = subprocess.run(
        # -I: ignore PYTHON* variables, the user site and the cwd; -B: write no .pyc next to the source.
        [sys.executable, "-I", "-B", "-c", PROBE, str(path), json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize(
    ("filename", "public"),
    [
        pytest.param("events.py", {"comment", "encode_event", "split_lines"}, id="events"),
        pytest.param("notices.py", {"Notice", "dumps", "is_valid_user_id"}, id="notices"),
        pytest.param("inbox.py", {"InboxState", "StateChange", "list_page", "snapshot"}, id="inbox"),
        pytest.param("presence.py", {"Presence", "PresenceStore"}, id="presence"),
        pytest.param("client.py", {"Client", "ClientError"}, id="client"),
    ],
)
def test_pure_module_imports_nothing_forbidden(filename: str, public: set[str]) -> None:
    """A pure module (events, notices, inbox, presence, client) loads no flask, werkzeug, gevent, redis.

    ``import sse_notify.events`` would run ``sse_notify/__init__.py`` first, which imports Flask,
    so a plain ``sys.modules`` diff around that import proves nothing. Instead a fresh interpreter
    (``python -I``) loads the module file directly by path with
    ``importlib.util.spec_from_file_location`` under a stand-in package whose ``__path__`` is the
    real folder: relative imports of siblings still work (and would be caught), but the real
    package ``__init__`` never runs. Two independent checks then hold: a meta path hook records
    every import attempted (even one guarded by ``try/except ImportError``), and the
    ``sys.modules`` diff shows nothing forbidden got loaded. The interpreter must also start with
    none of them preloaded, or the hook could not see them.
    """
    report = _probe(PACKAGE_DIR / filename)
    assert report["preloaded"] == []
    assert report["attempted"] == []
    assert report["loaded"] == []
    assert public <= set(report["public"])


def test_probe_catches_forbidden_imports(tmp_path: Path) -> None:
    """The probe reports a forbidden import, including one guarded by try/except and one via a sibling."""
    (tmp_path / "helper.py").write_text("import sqlite3\n")
    lines = [
        "import json",
        "from . import helper",
        "try:",
        "    import redis",
        "except ImportError:",
        "    pass",
    ]
    (tmp_path / "dirty.py").write_text("\n".join(lines) + "\n")
    report: dict[str, t.Any] = _probe(tmp_path / "dirty.py")
    assert report["preloaded"] == []
    assert "sqlite3" in report["attempted"]
    assert "redis" in report["attempted"]
    assert "sqlite3" in report["loaded"]


def test_gunicorn_conf_sets_the_metrics_directory_before_prometheus_client_loads(tmp_path: Path) -> None:
    """sse_notify.gunicorn_conf sets the metrics directory before anything imports prometheus_client.

    prometheus_client picks one-process or multiprocess mode when it is first
    imported; if the package imported it eagerly, /metrics would count only the
    worker that answers.
    """
    code = (
        "import os, sys\n"
        "from sse_notify.gunicorn_conf import *\n"
        "assert 'prometheus_client' not in sys.modules, 'imported too early'\n"
        "from sse_notify import metrics\n"
        "from prometheus_client import values\n"
        "print(os.environ['PROMETHEUS_MULTIPROC_DIR'], values.ValueClass.__name__)\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "SSE_NOTIFY_METRICS_MASTER")
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    directory, value_class = result.stdout.split()
    assert os.path.isdir(directory)
    assert value_class == "MmapedValue"  # the multiprocess one
    shutil.rmtree(directory)
