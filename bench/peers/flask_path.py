"""sse_notify without its stream fast path, for the benchmark's A/B (``python -m bench limit``).

The same app as ``wsgi:app``, with ``sse_notify.fastpath`` taken off: every stream goes
through Flask's request context, routing and response, as in a host app.
"""

from __future__ import annotations

from sse_notify import create_app

app = create_app()
app.wsgi_app = app.wsgi_app.__wrapped__  # type: ignore[method-assign,attr-defined]
