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
        pytest.param("errors.py", {"SSENotifyError", "InvalidUserId", "ClientError"}, id="errors"),
        pytest.param("control.py", {"Control", "Kind"}, id="control"),
        pytest.param("notices.py", {"Notice", "dumps", "is_valid_user_id"}, id="notices"),
        pytest.param("inbox.py", {"InboxState", "StateChange", "list_page", "snapshot"}, id="inbox"),
        pytest.param("presence.py", {"Presence", "PresenceStore"}, id="presence"),
        pytest.param("client.py", {"Client", "ClientError"}, id="client"),
    ],
)
def test_pure_module_imports_nothing_forbidden(filename: str, public: set[str]) -> None:
    """A pure module (events, errors, control, notices, inbox, presence, client) loads no flask or gevent.

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


def _package_imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports, anywhere in it.

    Imports inside functions count (they only hide a cycle); those under ``if TYPE_CHECKING:``
    do not (they never run). Importing ``a.b.c`` also runs the package ``a.b`` (not the top
    package, whose ``__init__`` is the public facade over everything).
    """
    import ast

    modules: dict[str, Path] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ["sse_notify", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path

    def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join([*base, *([name] if name else [])])

    def type_checking(test: ast.expr) -> bool:
        return "TYPE_CHECKING" in ast.unparse(test)

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()

        def visit(
            node: ast.AST, module: str = module, is_package: bool = is_package, found: set[str] = found
        ) -> None:
            if isinstance(node, ast.If) and type_checking(node.test):
                for child in node.orelse:
                    visit(child)
                return
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    resolve(module, is_package, node.level, node.module) if node.level else node.module or ""
                )
                targets = [base]
                targets += [
                    f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                while target and target != "sse_notify":
                    # (a module's own packages are already being imported when it runs)
                    if target in modules and target != module and not module.startswith(target + "."):
                        found.add(target)
                    target = target.rpartition(".")[0]
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[module] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each once, as the path that closes it)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycle = [*path[path.index(target) :], target]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif len(path) < 30:
                walk(target, [*path, target])

    for start in sorted(graph):
        if start != "sse_notify":
            walk(start, [start])
    return found


def test_the_package_has_no_import_cycles() -> None:
    """No module of sse_notify imports one that imports it back, not even from inside a function."""
    graph = _package_imports()
    assert {"sse_notify.cli", "sse_notify.extension", "sse_notify.views", "sse_notify.service"} <= set(graph)
    assert "sse_notify.service" in graph["sse_notify.views"]  # the graph sees real imports
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """The cycle search reports a cycle hidden two modules deep."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
