"""Scenario ``pending``: what pending scheduled notices cost publishing and new streams (issue #14).

Two stores per run, each on one ``gunicorn -k gevent -w 1`` worker with its scheduler loop running
(``DueWork`` claims what is due four times a second): one with no scheduled notice, one with
``--pending`` of them (100,000 by default), due a day later, written into the store before the
server starts. Alternating run by run (this machine is noisy), medians over the runs:

- **publish**: one notice per POST, ``ab -k -c 32`` (as in ``limit``);
- **connect**: new streams per second (:class:`~bench.loadgen.LoadGen`, as in ``limit``);
- **lateness**: with ``--pending`` waiting, 50 notices scheduled over HTTP to fall due two to
  three seconds later, each read by a stream as it arrives: how long after its due time it
  was stored (``created_at - due_at``), median and max.

The acceptance of #14 asks the pending notices to cost publishing and new streams less than 5 %,
and each notice to arrive within a second of its due time. Loopback only; every server started
here is stopped by PID.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import typing as t
from datetime import datetime
from pathlib import Path

import httpx

from bench.limit import _ab, _connect, _Server, setup
from sse_notify.auth import issue_token
from sse_notify.brokers.sqlite import SQLiteBroker
from sse_notify.notices import dumps

__all__ = ["pending", "render_pending"]


def _fill(path: str, count: int) -> None:
    """``count`` scheduled notices due a day from now, written straight into the store."""
    broker = SQLiteBroker(path)
    due = time.time() + 86400
    payload = dumps({"u": "someone", "d": '{"title":"later"}', "m": ""})
    for start in range(0, count, 5000):

        def work(db: t.Any, start: int = start) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO scheduled VALUES ('notice', ?, ?, ?, ?, 0)",
                [
                    (f"s{i:024x}", due + i * 0.001, due + i * 0.001, payload)
                    for i in range(start, min(count, start + 5000))
                ],
            )
            db.execute("COMMIT")

        broker._run(work)
    broker.close()


def _lateness(url: str, key: str, secret: str, count: int = 50) -> list[float]:
    """Seconds after its due time each of ``count`` scheduled notices was stored (one stream reads them)."""
    token = issue_token(secret, "late", 3600)
    seen: list[dict[str, t.Any]] = []
    done = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{url}/connection/late?token={token}", timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith('data: {"id"'):
                    seen.append(json.loads(line[6:]))
                    if len(seen) == count:
                        done.set()
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    due_at: dict[str, float] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        for n in range(count):
            answer = client.post(f"{url}/users/late/notices?delay={2 + n / count:.3f}", json={"n": n}).json()
            due_at[answer["scheduled_id"]] = datetime.fromisoformat(
                answer["due_at"].replace("Z", "+00:00")
            ).timestamp()
    if not done.wait(30):
        raise RuntimeError(f"only {len(seen)} of {count} scheduled notices arrived")
    return [
        datetime.fromisoformat(n["created_at"].replace("Z", "+00:00")).timestamp() - due_at[n["scheduled_id"]]
        for n in seen
    ]


def pending(runs: int, requests: int, streams: int, count: int) -> dict[str, t.Any]:
    """Run the figures ``runs`` times, alternating which store goes first; medians and ratios."""
    secret, key, env, tokens = setup(streams)
    rates: dict[str, list[float]] = {"publish_0": [], "publish_n": [], "connect_0": [], "connect_n": []}
    late: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "notice.json"
        body.write_text('{"title":"Build finished","text":"main is green","n":1}')
        for run in range(runs):
            order = ["0", "n"] if run % 2 == 0 else ["n", "0"]
            for figure in ("publish", "connect"):
                for who in order:
                    path = f"{tmp}/{figure}-{who}-{run}.sqlite3"
                    if who == "n":
                        _fill(path, count)
                    server = _Server("wsgi:app", {**env, "SSE_NOTIFY_BROKER_URL": f"sqlite:///{path}"})
                    try:
                        if figure == "publish":
                            url = f"{server.url}/users/alice/notices"
                            _ab(url, max(500, requests // 10), key, body)  # warm-up
                            rates[f"publish_{who}"].append(_ab(url, requests, key, body))
                        else:
                            rates[f"connect_{who}"].append(
                                _connect(lambda i: tokens[i], server.port, streams)
                            )
                            if who == "n" and run == 0:
                                late = _lateness(server.url, key, secret)
                    finally:
                        server.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "scenario": "pending",
        "runs": runs,
        "pending": count,
        "requests": requests,
        "streams": streams,
        "publish_per_s": round(medians["publish_0"], 1),
        "publish_pending_per_s": round(medians["publish_n"], 1),
        "publish_ratio": round(medians["publish_n"] / medians["publish_0"], 3),
        "connect_per_s": round(medians["connect_0"], 1),
        "connect_pending_per_s": round(medians["connect_n"], 1),
        "connect_ratio": round(medians["connect_n"] / medians["connect_0"], 3),
        "late_median_ms": round(statistics.median(late) * 1000, 1),
        "late_max_ms": round(max(late) * 1000, 1),
        "early": sum(1 for value in late if value < 0),
        "all": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


def render_pending(report: dict[str, t.Any]) -> str:
    """The figures as a table."""
    return "\n".join(
        [
            f"pending: median of {report['runs']} alternating run(s); one gunicorn -k gevent worker each, "
            "scheduler loop running",
            "",
            f"| figure | no scheduled notice | {report['pending']:,} pending | pending / none |",
            "|---|---:|---:|---:|",
            f"| one notice per POST, ab -k -c 32, {report['requests']:,} requests [/s] "
            f"| {report['publish_per_s']:,.0f} | {report['publish_pending_per_s']:,.0f} "
            f"| {report['publish_ratio']:.3f}x |",
            f"| new streams, {report['streams']:,} [/s] | {report['connect_per_s']:,.0f} "
            f"| {report['connect_pending_per_s']:,.0f} | {report['connect_ratio']:.3f}x |",
            "",
            f"50 notices due 2-3 s after scheduling, with {report['pending']:,} pending: stored "
            f"{report['late_median_ms']:,.0f} ms after their due time (median), "
            f"{report['late_max_ms']:,.0f} ms at most; {report['early']} early.",
        ]
    )
