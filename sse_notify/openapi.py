"""The OpenAPI 3 document of the HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

import typing as t

__all__ = ["document"]


def document(prefix: str = "") -> dict[str, t.Any]:
    """The OpenAPI document, with every path under ``prefix``."""
    return {"openapi": "3.1.0", "info": {"title": "sse_notify", "version": "0"}, "paths": {}}
