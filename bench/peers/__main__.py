"""Self-check: ``python -m bench.peers [sse_notify|nchan|flask-sse ...]``.

For each server: start it, open three streams (two users' and the broadcast stream) with raw
httpx streaming, wait until the server counts them, publish one notice to the first user and
one broadcast, check that each arrived where it should (and the unicast nowhere else), stop
the server. Prints one line per server with OK or FAIL; exits 1 on any FAIL.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import traceback

import httpx

from bench.peers import PEERS, STREAM_HEADERS, Peer


async def _read(client: httpx.AsyncClient, url: str, into: bytearray) -> None:
    async with client.stream("GET", url, headers=STREAM_HEADERS) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            into.extend(chunk)


async def check(peer: Peer) -> str:
    """Run the check against a started ``peer``; return what is wrong, or "" when all is well."""
    unicast, broadcast = f"uni-{secrets.token_hex(8)}", f"all-{secrets.token_hex(8)}"
    urls = {"alice": peer.stream_url("alice"), "bob": peer.stream_url("bob")}
    urls["broadcast"] = peer.broadcast_stream_url("carol")
    seen = {name: bytearray() for name in urls}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
        tasks = [asyncio.create_task(_read(client, url, seen[name])) for name, url in urls.items()]
        try:
            await asyncio.to_thread(peer.wait_streams, len(urls), 20)
            await asyncio.to_thread(peer.publish, "alice", {"marker": unicast})
            await asyncio.to_thread(peer.broadcast, {"marker": broadcast})
            want = {"alice": [unicast], "broadcast": [broadcast]}
            if peer.multiplexed:
                want = {"alice": [unicast, broadcast], "bob": [broadcast], "broadcast": [broadcast]}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                missing = [f"{m} on {n}" for n, ms in want.items() for m in ms if m.encode() not in seen[n]]
                failed = [task for task in tasks if task.done()]
                if not missing or failed:
                    break
                await asyncio.sleep(0.05)
            for task in tasks:
                if task.done() and task.exception():
                    return f"a stream failed: {task.exception()!r}"
            if missing:
                return "missing: " + ", ".join(missing)
            if unicast.encode() in seen["bob"] or unicast.encode() in seen["broadcast"]:
                return "the unicast reached another stream"
            return ""
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    classes = [cls for cls in PEERS if not names or cls.name in names]
    failed = False
    for cls in classes:
        started = time.monotonic()
        problem = ""
        pids: list[int] = []
        try:
            with cls() as peer:
                pids = peer.pids()
                problem = asyncio.run(check(peer))
        except Exception as exc:
            traceback.print_exc()
            problem = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        if problem:
            failed = True
            print(f"{cls.name}: FAIL ({problem}; {took:.1f}s)")
        else:
            print(f"{cls.name}: OK (pids {pids}; {took:.1f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
