"""The README's serve command, word for word, in a clean copy with a fresh virtualenv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from .support import ROOT, free_port, require_binary, wait_for

pytestmark = pytest.mark.server


def test_make_serve_on_a_fresh_checkout(tmp_path: Path) -> None:
    """`make serve` installs only what serving needs and then serves streams and publishes."""
    make = require_binary("make", "the README's quick start runs `make serve`")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    checkout = tmp_path / "checkout"
    for name in tracked.stdout.split():
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    port = free_port()
    # The same command; only the port differs, through gunicorn's own environment variable.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SSE_NOTIFY_"))}
    env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{port} --no-control-socket"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [make, "serve"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text())
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 240, "make serve to answer", interval=0.5)
        # A first run makes its own token secret and publish key (development mode).
        key = (checkout / "instance" / "publish_key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=10) as client:
            token = client.post(url + "/users/alice/tokens", headers=auth).json()["token"]
            with client.stream("GET", f"{url}/connection/alice?token={token}") as stream:
                chunks = stream.iter_raw()
                assert next(chunks).startswith(b": connected")
                sent = client.post(url + "/users/alice/notices", json={"title": "Hello"}, headers=auth)
                assert sent.status_code == 201
                assert f"id: {sent.json()['id']}\nevent: notice\n".encode() in next(chunks)
        assert (checkout / "instance" / "sse_notify.sqlite3").exists()
        frozen = subprocess.run(
            [str(checkout / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        installed = {line.split("==")[0].lower() for line in frozen.split()}
        assert {"flask", "gunicorn", "gevent", "packaging"} <= installed
        assert not installed & {"pytest", "playwright", "mypy"}  # serving installs no test tools
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
