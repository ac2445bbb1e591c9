"""flask-sse peer for the benchmark: the stream at ``/stream?channel=<name>`` and ``POST /publish/<channel>``.

flask-sse streams one Redis pub/sub channel per connection and cannot multiplex:
a user is a channel (``/stream?channel=alice``), and a broadcast goes to channel
``all``, which a client needs a second connection for. In the fan-out scenario
every client subscribes to ``/stream?channel=all`` only.

Run from the repository root (``SSE_REDIS_URL`` is required)::

    SSE_REDIS_URL=redis://127.0.0.1:6390/0 gunicorn -k gevent --worker-connections 20000 -w 1 \
        -c bench/peers/flask_sse_gunicorn.conf.py -b 127.0.0.1:8100 bench.peers.flask_sse_app:app
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from flask_sse import sse  # type: ignore[import-untyped]

app = Flask(__name__)
app.config["SSE_REDIS_URL"] = os.environ["SSE_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish/<channel>")
def publish(channel: str):  # type: ignore[no-untyped-def]
    """Publish the JSON body as an event of type ``notice``; answer once Redis took it."""
    receivers = sse.publish(request.get_json(force=True), type="notice", channel=channel)
    return jsonify(channel=channel, receivers=receivers), 201


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """200 when Redis answers."""
    sse.redis.ping()
    return jsonify(status="ok"), 200
