"""The example app (examples/notify_app) plus an ``X-Worker-Pid`` response header.

``gunicorn ... 'tests.instrumented_example:create_app(instance_path="...")'`` serves exactly
what the example serves; the header only tells a test which worker holds a stream.
"""

from __future__ import annotations

import os

from flask import Flask, Response

from examples import notify_app


def create_app(instance_path: str) -> Flask:
    """The example's app, its instance folder at ``instance_path``, answers naming their worker."""
    app = notify_app.create_app(instance_path=instance_path)

    @app.after_request
    def _worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
