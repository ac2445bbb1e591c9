"""Run scenarios against sse_notify and its peers in one go: same N, same load, fresh servers.

:func:`run` starts a fresh server for every (run, scenario, peer), in that nesting, so the
peers of one scenario are measured minutes apart on the same machine, and no scenario inherits
another's memory or stored notices. :func:`make_peer` holds the settings every peer runs with:

- sse_notify: ``gunicorn -k gevent -w 1``, SQLite store, ``SSE_NOTIFY_HEARTBEAT=5`` (default 15 s:
  so the idle window sees heartbeats), ``SSE_NOTIFY_RATE_LIMIT=""`` (no publish rate limit; the
  default 1000/s per key would cap the publish steps).
- nchan: nginx, one worker, ``nchan_eventsource_ping_interval 5`` (Nchan's heartbeat, off by
  default), so idle CPU compares like with like.
- flask-sse: ``gunicorn -k gevent --worker-connections 20000 -w 1`` on its own redis-server.
  It has no heartbeat.

A peer whose programs are missing (nginx and its Nchan module; redis-server or the flask-sse
package) is skipped with the reason, or is a failure when ``SSE_NOTIFY_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import typing as t
from datetime import datetime, timezone
from pathlib import Path

from bench.peers import NCHAN_MODULE, FlaskSSE, Nchan, Peer, SSENotify
from bench.report import add_common, aggregate, common_unicast_rate
from bench.scenarios import SCENARIOS, Load

__all__ = ["PEER_NAMES", "SSE_NOTIFY_ENV", "machine", "make_peer", "missing", "problems", "run", "settings"]

PEER_NAMES = ("sse_notify", "nchan", "flask-sse")
HEARTBEAT = 5
#: What sse_notify runs with in the comparison (see the module docstring).
SSE_NOTIFY_ENV = {"SSE_NOTIFY_HEARTBEAT": str(HEARTBEAT), "SSE_NOTIFY_RATE_LIMIT": ""}


def make_peer(name: str) -> Peer:
    """A peer with the benchmark's settings (not started)."""
    if name == "sse_notify":
        return SSENotify(env=SSE_NOTIFY_ENV)
    if name == "nchan":
        return Nchan(ping_interval=HEARTBEAT)
    if name == "flask-sse":
        return FlaskSSE()
    raise ValueError(f"unknown peer {name!r} (one of {', '.join(PEER_NAMES)})")


def missing(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    if name == "nchan":
        if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
            return "nginx is not installed (apt-get install nginx libnginx-mod-nchan)"
        if (
            not NCHAN_MODULE.exists()
            and not Path("/usr/share/nginx/modules-available/mod-nchan.conf").exists()
        ):
            return f"the Nchan module is not installed ({NCHAN_MODULE}; apt-get install libnginx-mod-nchan)"
    if name == "flask-sse":
        if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
            return "redis-server is not installed (apt-get install redis-server)"
        for module, package in (("flask_sse", "flask-sse"), ("redis", "redis")):
            if importlib.util.find_spec(module) is None:
                return f"the {package} package is not installed (pip install 'sse-notify[bench,redis]')"
    return None


def settings(info: t.Mapping[str, t.Any]) -> str:
    """One line saying what ran: the machine and each peer's settings (from :func:`machine`)."""
    return (
        f"{info['date']}, {info['cores']} cores, Python {info['python']}, gunicorn {info['gunicorn']} "
        f"(gevent {info['gevent']}), {info['nginx']}, {info['redis-server'].split(' sha=')[0]}, "
        f"flask-sse {info['flask-sse']}. One worker each: sse_notify with SSE_NOTIFY_HEARTBEAT={HEARTBEAT} "
        "and SSE_NOTIFY_RATE_LIMIT='' (no limit), SQLite store; nchan with "
        f"nchan_eventsource_ping_interval {HEARTBEAT}; flask-sse (no heartbeat) on its own redis-server."
    )


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "n/a"


def machine() -> dict[str, t.Any]:
    """Where the numbers come from."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "n/a"

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": pkg("gunicorn"),
        "gevent": pkg("gevent"),
        "flask-sse": pkg("flask-sse"),
        "nginx": _version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "redis-server": _version([shutil.which("redis-server") or "/usr/bin/redis-server", "--version"]),
        "sse_notify_env": SSE_NOTIFY_ENV,
        "nchan_ping_interval": HEARTBEAT,
    }


def _short(exc: BaseException) -> str:
    """The first line of ``exc``'s message, HTML tags and all, at most 300 characters."""
    text = " ".join(re.sub(r"<[^>]*>", " ", str(exc)).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    scenarios: t.Sequence[str],
    peers: t.Sequence[str],
    load: Load,
    runs: int,
    *,
    require_all: bool = False,
) -> dict[str, t.Any]:
    """Run every scenario against every peer ``runs`` times; see the module docstring.

    Returns ``{"results": {peer: {scenario: {"runs": [...], "errors": [...], "median": {...}}}},
    "skipped": {peer: reason}, "load": ..., "machine": ...}``.
    """
    skipped: dict[str, str] = {}
    errors_global: list[str] = []
    for name in peers:
        reason = missing(name)
        if reason:
            if require_all:
                errors_global.append(f"{name}: {reason} (SSE_NOTIFY_REQUIRE_ALL=1)")
            else:
                _log(f"SKIP {name}: {reason}")
            skipped[name] = reason
    results: dict[str, dict[str, t.Any]] = {p: {} for p in peers if p not in skipped}
    for k in range(runs):
        for scenario in scenarios:
            for name in results:
                entry = results[name].setdefault(scenario, {"runs": [], "errors": []})
                started = time.monotonic()
                peer = make_peer(name)
                try:
                    peer.start()
                    try:
                        figures = SCENARIOS[scenario](peer, load)
                    finally:
                        peer.stop()
                except Exception as exc:
                    _log(traceback.format_exc(limit=6))
                    entry["errors"].append(f"run {k + 1}: {type(exc).__name__}: {_short(exc)}")
                    took = time.monotonic() - started
                    _log(f"run {k + 1}/{runs} {scenario:8} {name:10} ERROR {exc} ({took:.1f}s)")
                    continue
                entry["runs"].append(figures)
                short = {
                    key: figures[key]
                    for key in _SHORT.get(scenario, ())
                    if key in figures and figures[key] is not None
                }
                _log(
                    f"run {k + 1}/{runs} {scenario:8} {name:10} {time.monotonic() - started:5.1f}s "
                    + " ".join(f"{key}={value}" for key, value in short.items())
                )
    for scenarios_of in results.values():
        for entry in scenarios_of.values():
            entry["median"] = aggregate(entry["runs"])
    add_common(results, common_unicast_rate(results))
    return {
        "results": results,
        "skipped": skipped,
        "errors": errors_global,
        "load": load.as_dict(),
        "runs": runs,
        "peers": list(peers),
        "scenarios": list(scenarios),
        "machine": machine(),
    }


#: Figures echoed on the progress line of each scenario.
_SHORT = {
    "idle": ("reached", "rss_worker_kib_per_stream", "rss_all_kib_per_stream", "cpu_rest_pct"),
    "connect": ("reached", "connect_per_s", "failed"),
    "fanout": ("reached", "fanout_to_last_ms", "sustained_to_last_last_ms", "sustained_lost"),
    "unicast": (
        "reached",
        "unicast_max_per_s",
        "unicast_recv_p99_ms",
        "batch_max_per_s",
        "batch_10k_recv_p99_ms",
    ),
    "churn": ("reached", "reconnects_per_s", "server_streams_after", "fds_growth", "churn_lost"),
}

#: Figures that must be 0 (or absent) in a healthy run.
_LOSSES = ("fanout_lost", "sustained_lost", "unicast_lost", "batch_lost", "churn_lost")


def problems(report: t.Mapping[str, t.Any], *, strict: bool) -> list[str]:
    """What makes the run a failure: errors always; with ``strict`` (the smoke run) also lost
    notices, streams not reached, and a rate series without a single sustained step."""
    found = list(report.get("errors", []))
    for peer, scenarios in report["results"].items():
        for scenario, entry in scenarios.items():
            found += [f"{peer} {scenario}: {e}" for e in entry["errors"]]
            if not strict:
                continue
            for figures in entry["runs"]:
                for key in _LOSSES:
                    if figures.get(key):
                        found.append(f"{peer} {scenario}: {key} = {figures[key]}")
                if figures.get("reached", 0) < figures.get("streams", 0):
                    found.append(
                        f"{peer} {scenario}: reached {figures['reached']} of {figures['streams']} streams"
                    )
                if scenario == "unicast" and not figures.get("unicast_max_per_s"):
                    found.append(f"{peer} unicast: no rate step was sustained")
                if scenario == "unicast" and figures.get("batch_max_per_s") == 0:
                    found.append(f"{peer} unicast: no batched rate step was sustained")
    return found
