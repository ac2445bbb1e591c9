"""Log output: plain text or JSON lines, on standard error.

Every record of the ``sse_notify`` loggers carries its facts as fields
(``event``, ``user_id``, ``reason``, ...) as well as in its message, so the
JSON form (``SSE_NOTIFY_LOG_FORMAT=json``, python-json-logger) can be filtered
and counted without parsing text. No record holds a token or a notice's data.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["FORMATS", "configure"]

#: ``SSE_NOTIFY_LOG_FORMAT`` values: ``""`` leaves logging to the host app.
FORMATS = ("", "text", "json")

_TEXT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (so a second call replaces it)."""


def configure(fmt: str, level: str) -> None:
    """Send the ``sse_notify`` loggers' records at ``level`` and above to stderr, as ``fmt``."""
    logger = logging.getLogger("sse_notify")
    for old in [h for h in logger.handlers if isinstance(h, _OurHandler)]:
        logger.removeHandler(old)
    if not fmt:
        return
    handler = _OurHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(process)d %(message)s",
                rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
                timestamp="time",  # ISO 8601 in UTC, to the microsecond
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
