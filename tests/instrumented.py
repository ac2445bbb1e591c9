"""The real app plus introspection that only tests need.

``gunicorn ... tests.instrumented:app`` serves exactly what ``wsgi:app`` serves,
and adds an ``X-Worker-Pid`` response header and ``GET /_debug/objects``: live
counts of greenlets, hub connections and their buffers in the answering worker.
"""

from __future__ import annotations

import gc
import os

from flask import Response, jsonify
from greenlet import greenlet

from sse_notify import admission, create_app
from sse_notify.service import get_state
from sse_notify.streams import Stream

app = create_app()


@app.after_request
def _worker_pid(response: Response) -> Response:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/_debug/objects")
def _objects() -> Response:
    gc.collect()
    objects = gc.get_objects()
    hub = get_state().hub
    return jsonify(
        pid=os.getpid(),
        greenlets=sum(1 for o in objects if isinstance(o, greenlet) and not o.dead),
        connections=sum(1 for o in objects if isinstance(o, Stream)),
        hub_connections=len(hub.streams),
        hub_users=len(hub.users),
        pending_bytes=sum(s.pending for s in hub.streams),
        evicted=hub.evicted,
        admission=None
        if admission.current is None
        else {
            "row": admission.current.row,
            "paused": admission.current.paused,
            "pauses": admission.current.pauses,
            "pending": admission.current.pending,
            "peers": admission.current.table.peers(admission.current.row),
        },
    )
