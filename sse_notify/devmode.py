"""The first-run demo: where the page is, and the key it needs.

On a first run with no ``SSE_NOTIFY_PUBLISH_KEYS``, the app generates a publish
key in its instance folder. gunicorn's ``when_ready`` hook (in
``gunicorn.conf.py``) calls :func:`demo_url` to print the demo page's address
with that key in the URL fragment (``#key=...``): a fragment never travels to a
server or into an access log, and only someone who can read the server's log
or its instance folder can use it.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask

from .security import instance_secret

__all__ = ["demo_url"]


def demo_url(address: t.Any, environ: t.Mapping[str, str] | None = None) -> str | None:
    """The demo page URL for a bound address (``(host, port)`` or a Unix socket path).

    Includes ``#key=`` only in development mode (no configured publish keys);
    ``None`` for a Unix socket.
    """
    environ = os.environ if environ is None else environ
    if not isinstance(address, tuple):
        return None
    host, port = address[0], address[1]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if environ.get("SSE_NOTIFY_PUBLISH_KEYS") or environ.get("SSE_NOTIFY_AUTH") == "none":
        return url
    instance = Flask("sse_notify", instance_relative_config=True).instance_path
    return f"{url}#key={instance_secret(instance, 'publish_key')}"
