"""nginx in front of sse_notify, configured by the sample in docs/PRODUCTION.md, and scenario ``proxy``.

:func:`doc_nginx_block` reads the first ```` ```nginx ```` block of docs/PRODUCTION.md, and
:func:`nginx_conf` makes it runnable here, changing only what is specific to a host: the
upstream's ``server`` lines become the one gunicorn started here, ``listen 443 ssl`` becomes a
free loopback port (no TLS: the ``ssl_*`` lines go), and ``access_log`` paths move into the temp
dir. Everything else (``proxy_buffering off``, ``proxy_http_version 1.1``, the timeouts, the
``sse_notify_noquery`` log format) is the doc's, word for word, inside a minimal main config
that runs as any user: pid, logs and temp paths in the temp dir, ``daemon off``, and gzip
switched on for every type, as a main config may have it, so the doc's ``gzip off`` must hold.
:class:`DocNginx` runs it (tests/test_nginx.py does too, so the doc stays true).

Scenario ``proxy`` (:func:`proxy`): one ``gunicorn -k gevent -w 1``, and nginx in front of it.
Two users each hold a stream opened directly and one opened through nginx (user A's direct
stream first, user B's nginx stream first, so neither path is always written first). Notices
are published one per POST, directly, at a fixed rate, alternating between A and B; the clock
is this process's (the publisher and the readers share one event loop). Reported per path:
publish-to-receive p50/p99/max (POST sent -> event parsed) and lost notices; then per notice
the difference nginx - direct on the same user (p50/p99), and the ratio of the medians.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import time
import typing as t
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

from bench.loadgen import percentile
from bench.peers import ROOT, STREAM_HEADERS, Peer, SSENotify

__all__ = ["DOC", "DocNginx", "doc_nginx_block", "nginx_binary", "nginx_conf", "proxy"]

#: The document whose nginx sample this runs.
DOC = ROOT / "docs" / "PRODUCTION.md"

_BLOCK = re.compile(r"^```nginx\n(.*?)^```", re.MULTILINE | re.DOTALL)
_UPSTREAM_SERVER = re.compile(r"^([ \t]*)server[ \t]+[^;\n]+;[^\n]*\n", re.MULTILINE)
_LISTEN = re.compile(r"^([ \t]*)listen[ \t]+[^;\n]+;[^\n]*$", re.MULTILINE)
_SSL = re.compile(r"^[ \t]*ssl_[^\n]*\n", re.MULTILINE)
_ACCESS_LOG = re.compile(r"\baccess_log[ \t]+(/[^\s;]+)")


def nginx_binary() -> str | None:
    """The nginx program (Debian installs it in /usr/sbin, which a user's PATH may lack), or None."""
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if Path(found).is_file() else None


def doc_nginx_block(doc: Path = DOC) -> str:
    """The first ```` ```nginx ```` fenced block of ``doc``."""
    match = _BLOCK.search(doc.read_text())
    if match is None:
        raise ValueError(f"no ```nginx block in {doc}")
    return match.group(1)


def nginx_conf(
    prefix: Path,
    port: int,
    upstream: str,
    *,
    changes: t.Mapping[str, str] | None = None,
) -> str:
    """A whole nginx.conf: the doc's block (see the module docstring) listening on
    127.0.0.1:``port``, proxying to ``upstream`` (``host:port``), its files in ``prefix``.
    ``changes`` replaces text that occurs exactly once in the block (a test's control)."""
    block = doc_nginx_block()
    for old, new in (changes or {}).items():
        if block.count(old) != 1:
            raise ValueError(f"{old!r} occurs {block.count(old)} times in the doc's nginx block, not once")
        block = block.replace(old, new)
    head, brace, rest = block.partition("upstream sse_notify {")
    if not brace:
        raise ValueError("the doc's nginx block has no 'upstream sse_notify {'")
    body, close, tail = rest.partition("}")
    indents = _UPSTREAM_SERVER.findall(body)
    if not indents:
        raise ValueError("the doc's upstream has no server line")
    body = f"\n{indents[0]}server {upstream};\n" + _UPSTREAM_SERVER.sub("", body).lstrip("\n")
    block = head + brace + body + close + tail
    block, listens = _LISTEN.subn(rf"\g<1>listen 127.0.0.1:{port};", block)
    if listens != 1:
        raise ValueError(f"the doc's nginx block must have one listen line, not {listens}")
    block = _SSL.sub("", block)
    block = _ACCESS_LOG.sub(lambda m: f"access_log {prefix}/{Path(m.group(1)).name}", block)
    inner = "".join(f"    {line}\n" if line.strip() else "\n" for line in block.splitlines())
    return f"""# Rendered by bench/proxy.py from the first nginx block of docs/PRODUCTION.md.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # As a main config may have it: the doc's "gzip off" for streams must win.
    gzip on;
    gzip_types *;

{inner}}}
"""


class DocNginx(Peer):
    """nginx in the foreground (``daemon off``) running :func:`nginx_conf` in front of ``upstream``.

    ``base_url`` is nginx's; paths are the app's (``/connection/<user>?token=...``,
    ``/users/<user>/notices``). :meth:`access_log` reads a log it wrote. Stopped by PID
    (SIGTERM: nginx's fast shutdown, which closes open streams).
    """

    name = "nginx"

    def __init__(
        self, upstream: str, *, changes: t.Mapping[str, str] | None = None, nginx: str | None = None
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.changes = dict(changes or {})
        self.nginx = nginx or nginx_binary() or "/usr/sbin/nginx"

    def _start(self) -> None:
        assert self.tmp is not None
        if os.geteuid() == 0:
            # Started as root, nginx runs its worker as "nobody", which must reach the temp
            # paths (a large request body goes to client_body_temp_path).
            self.tmp.chmod(0o711)
        conf = self.tmp / "nginx.conf"
        conf.write_text(nginx_conf(self.tmp, self.port, self.upstream, changes=self.changes))
        cmd = [self.nginx, "-p", f"{self.tmp}/", "-c", str(conf), "-e", str(self.tmp / "error.log")]
        self._spawn("nginx", [*cmd, "-g", "daemon off;"])
        self._wait(lambda: self.client.get(self.base_url + "/healthz").status_code == 200, "/healthz")
        self._wait(lambda: len(self.pids()) >= 2, "the worker")

    def access_log(self, name: str = "sse_notify.access.log") -> str:
        """What nginx wrote to ``name`` in its directory so far ("" before the first line)."""
        path = self.tmp / name if self.tmp is not None else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""


# -- scenario proxy ----------------------------------------------------------------------------

USERS = ("proxy-a", "proxy-b")


async def _reader(
    url: str, opened: asyncio.Event, arrivals: dict[int, list[float]], done: asyncio.Event
) -> None:
    """Record when each notice (by id) arrives on the stream at ``url``."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:  # noqa: SIM117
        async with aconnect_sse(client, "GET", url, headers=STREAM_HEADERS) as source:
            source.response.raise_for_status()
            opened.set()
            async for sse in source.aiter_sse():
                if sse.event == "notice":
                    arrivals.setdefault(int(sse.id), []).append(time.perf_counter())
                if done.is_set():
                    return


def _figures(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
    }


async def _measure(app: SSENotify, nginx: DocNginx, notices: int, rate: float) -> dict[str, t.Any]:
    done = asyncio.Event()
    # (user, path) -> {notice id: [arrival times]}
    arrivals: dict[tuple[str, str], dict[int, list[float]]] = {}
    tasks: list[asyncio.Task[None]] = []
    sent: dict[int, tuple[str, float]] = {}
    try:
        for k, user in enumerate(USERS):
            direct = app.stream_url(user)
            via = nginx.base_url + direct.removeprefix(app.base_url)
            order = [("direct", direct), ("nginx", via)]
            for path, url in order if k % 2 == 0 else order[::-1]:
                opened = asyncio.Event()
                got = arrivals.setdefault((user, path), {})
                tasks.append(asyncio.create_task(_reader(url, opened, got, done)))
                await asyncio.wait_for(opened.wait(), 15)
                await asyncio.to_thread(app.wait_streams, len(tasks), 15)
        headers = {"Authorization": f"Bearer {app.publish_key}"}
        async with httpx.AsyncClient(base_url=app.base_url, headers=headers, timeout=10) as client:
            started = time.monotonic()
            for i in range(notices):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                user = USERS[i % len(USERS)]
                at = time.perf_counter()
                response = await client.post(f"/users/{user}/notices", json={"i": i})
                response.raise_for_status()
                sent[int(response.json()["id"])] = (user, at)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
            id_ in arrivals[(user, path)] for id_, (user, _) in sent.items() for path in ("direct", "nginx")
        ):
            await asyncio.sleep(0.05)
    finally:
        done.set()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)]
    paths: dict[str, dict[str, t.Any]] = {}
    latency: dict[str, dict[int, float]] = {"direct": {}, "nginx": {}}
    for path in ("direct", "nginx"):
        lost = duplicated = 0
        for id_, (user, at) in sent.items():
            times = arrivals[(user, path)].get(id_, [])
            lost += not times
            duplicated += max(0, len(times) - 1)
            if times:
                latency[path][id_] = times[0] - at
        paths[path] = {**_figures(list(latency[path].values())), "lost": lost, "duplicated": duplicated}
    both = [i for i in sent if i in latency["nginx"] and i in latency["direct"]]
    paired = [latency["nginx"][i] - latency["direct"][i] for i in both]
    p50_direct, p50_nginx = paths["direct"]["p50_ms"], paths["nginx"]["p50_ms"]
    return {
        "direct": paths["direct"],
        "nginx": paths["nginx"],
        "difference_p50_ms": round(statistics.median(paired) * 1000, 3) if paired else None,
        "difference_p99_ms": round(percentile(paired, 99) * 1000, 3) if paired else None,
        "ratio_p50": round(p50_nginx / p50_direct, 2) if p50_direct and p50_nginx is not None else None,
        "errors": errors,
    }


def proxy(notices: int, rate: float, env: dict[str, str] | None = None) -> dict[str, t.Any]:
    """Scenario ``proxy`` (see the module docstring): one run, fresh servers; its figures."""
    with SSENotify(env=env) as app, DocNginx(f"127.0.0.1:{app.port}") as nginx:
        figures = asyncio.run(_measure(app, nginx, notices, rate))
        nginx_errors = [line for line in nginx.log().splitlines() if "[error]" in line or "[crit]" in line]
    return {
        "scenario": "proxy",
        "notices": notices,
        "rate_per_s": rate,
        **figures,
        "nginx_errors": nginx_errors[:5],
    }
