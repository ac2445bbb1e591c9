"""Scenario ``fallback``: what the fallback channels cost publishing (issue #15).

Three servers, each one ``gunicorn -k gevent -w 1`` worker on a fresh SQLite store, alternating
run by run (this machine is noisy), one notice per POST with ``ab -k -c 32`` (as in ``limit``),
medians over the runs:

- **off**: no channel set up (the default): publishing does nothing for fallbacks;
- **on**: the webhook channel on (``SSE_NOTIFY_FALLBACK_DIGEST=60``, the default window). Before a
  user's notice is stored, the publish keeps the user's entry for the window, once per user and
  window in each process: with one user, once a minute;
- **worst**: the same with 10 ms windows, so nearly every publish round keeps an entry first: what
  a publisher that sends each notice to a user with no other notice in the last minute pays.

The webhook points at a port nobody listens on and is never called within the run (a notice falls
back after ``SSE_NOTIFY_FALLBACK_AFTER``, 300 s). Loopback only; every server is stopped by PID.
"""

from __future__ import annotations

import statistics
import tempfile
import typing as t
from pathlib import Path

from bench.limit import _ab, _Server, setup

__all__ = ["fallback", "render_fallback"]

_ON = {
    "SSE_NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9/never-called",
    "SSE_NOTIFY_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}
SERVERS: dict[str, dict[str, str]] = {
    "off": {},
    "on": _ON,
    "worst": {**_ON, "SSE_NOTIFY_FALLBACK_DIGEST": "0.01"},
}


def fallback(runs: int, requests: int) -> dict[str, t.Any]:
    """Run the three servers ``runs`` times, rotating who goes first; medians and ratios to ``off``."""
    _, key, env, _ = setup(1)
    rates: dict[str, list[float]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "notice.json"
        body.write_text('{"title":"Build finished","text":"main is green","n":1}')
        names = list(SERVERS)
        for run in range(runs):
            for name in names[run % 3 :] + names[: run % 3]:
                store = f"sqlite:///{tmp}/{name}-{run}.sqlite3"
                server = _Server("wsgi:app", {**env, **SERVERS[name], "SSE_NOTIFY_BROKER_URL": store})
                try:
                    url = f"{server.url}/users/alice/notices"
                    _ab(url, max(500, requests // 10), key, body)  # warm-up
                    rates[name].append(_ab(url, requests, key, body))
                finally:
                    server.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "scenario": "fallback",
        "runs": runs,
        "requests": requests,
        **{f"publish_{name}_per_s": round(value, 1) for name, value in medians.items()},
        "on_ratio": round(medians["on"] / medians["off"], 3),
        "worst_ratio": round(medians["worst"] / medians["off"], 3),
        "all": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def render_fallback(report: dict[str, t.Any]) -> str:
    """The report as a Markdown table."""
    rows = [
        f"fallback: median of {report['runs']} rotating run(s); one gunicorn -k gevent worker each, "
        f"ab -k -c 32, {report['requests']:,} POSTs",
        "",
        "| channels | one notice per POST [/s] | / off |",
        "|---|---:|---:|",
        f"| off (the default) | {report['publish_off_per_s']:,.0f} | 1.00x |",
        f"| webhook on, 60 s windows | {report['publish_on_per_s']:,.0f} | {report['on_ratio']:.2f}x |",
        f"| webhook on, 10 ms windows (an entry nearly every round) | {report['publish_worst_per_s']:,.0f} "
        f"| {report['worst_ratio']:.2f}x |",
    ]
    return "\n".join(rows)
