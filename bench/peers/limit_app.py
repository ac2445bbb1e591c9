"""The stack's own limit, for the benchmark: what Flask and gunicorn's gevent worker do with no sse_notify.

- ``app``: a minimal Flask JSON endpoint, ``POST /users/<user_id>/notices``: it reads the
  JSON body and answers ``201`` with it (no store, no auth). One notice per POST of
  sse_notify is measured against it (``python -m bench limit``).
- ``streams``: a bare WSGI app whose ``GET`` answers ``text/event-stream`` with one event
  and then holds the stream (a greenlet each): the most new streams per second the
  worker opens with nothing of ours in the way.

Run from the repository root::

    gunicorn -k gevent -w 1 -b 127.0.0.1:8200 bench.peers.limit_app:app
"""

from __future__ import annotations

import typing as t

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/users/<user_id>/notices")
def publish(user_id: str) -> t.Any:
    """Answer 201 with the JSON body, as a publish would, storing nothing."""
    return jsonify(id=1, user_id=user_id, data=request.get_json()), 201


@app.get("/healthz")
def healthz() -> t.Any:
    """200."""
    return jsonify(status="ok")


def streams(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterator[bytes]:
    """A stream that sends its preamble and stays open (for an hour) doing nothing."""
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Type", "application/json")])
        return iter([b'{"status":"ok"}'])
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return _held()


def _held() -> t.Iterator[bytes]:
    import gevent

    yield b": connected\n\nid: 0\nretry: 2000\n\n"
    gevent.sleep(3600)
