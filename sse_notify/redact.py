"""Keep connection tokens out of access logs.

EventSource cannot send headers, so browsers pass the token in the URL
(``?token=``). gunicorn's and Werkzeug's access logs print request lines with
their query strings; this filter rewrites ``token=...`` (and ``key=...``) in
every argument of their records to ``token=[redacted]`` before anything is
written.
"""

from __future__ import annotations

import logging
import re
import typing as t

__all__ = ["RedactSecrets", "install"]

_SECRET_PARAM = re.compile(r"((?:^|[?&;\s])(?:token|key|access_token)=)[^&;\s\"']*", re.IGNORECASE)

#: Loggers that write request lines: gunicorn's access and error logs, Werkzeug's dev server.
ACCESS_LOGGERS = ("gunicorn.access", "gunicorn.error", "werkzeug")


def redact(text: str) -> str:
    """``text`` with the values of ``token=``, ``key=`` and ``access_token=`` replaced."""
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


def _clean(value: t.Any) -> t.Any:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """A logging filter that redacts secret query parameters in a record's message and args."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_clean(v) for v in record.args)
        return True


def install() -> None:
    """Add the filter to the access loggers (once)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
