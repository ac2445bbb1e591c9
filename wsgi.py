"""The WSGI entry point: ``gunicorn -k gevent wsgi:app`` (settings in gunicorn.conf.py)."""

from sse_notify import create_app

app = create_app()
