"""The built wheel: version metadata, and the top-level templates/ shipped inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import sse_notify

from .support import ROOT


def test_version_matches_metadata() -> None:
    """sse_notify.__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert sse_notify.__version__ == version("sse-notify")


def test_installed_wheel_serves_the_page(tmp_path: Path) -> None:
    """A wheel installed outside the checkout still finds templates/sse_notify/index.html and serves /."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sse_notify-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sse_notify/templates/sse_notify/index.html" in names
    assert "sse_notify/static/sse-notify.js" in names
    assert "sse_notify/static/sse-notify.d.ts" in names  # (#16: the client's TypeScript declarations)
    assert "sse_notify/static/sse-notify-sw.js" in names
    assert "sse_notify/templates/sse_notify/email/notices.html" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    check = (
        f"import sse_notify; assert sse_notify.__file__.startswith({str(target)!r}), sse_notify.__file__;"
        "app = sse_notify.create_app({'SSE_NOTIFY_BROKER_URL': 'memory://'});"
        "c = app.test_client(); r = c.get('/'); assert r.status_code == 200 and b'sse-notify.js' in r.data;"
        "r = c.get('/sse-notify.js'); assert r.status_code == 200 and b'SSENotify' in r.data;"
        "r = c.get('/sse-notify.d.ts'); assert r.status_code == 200 and b'export as namespace' in r.data;"
        "r = c.get('/sse-notify.mjs'); assert r.status_code == 200 and b'export default SSENotify' in r.data"
    )
    subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True, timeout=60
    )
