"""The text/event-stream wire format (WHATWG HTML, "Server-sent events").

Pure code: this module imports only the standard library and does no I/O. It
must never import Flask, gevent or a broker (``tests/test_imports.py`` checks
it), so it can be tested byte for byte and reused by any transport.

Rules kept here:

- ``data`` is split on CRLF, lone CR and lone LF only (never ``str.splitlines``,
  which also splits on U+2028, U+0085, form feed ...), one ``data:`` line each.
- ``event`` and ``id`` can never inject a line: CR and LF are rejected, and so is
  NUL in ``id`` (a browser silently ignores such an id, which breaks resume).
- ``id=0`` and ``retry=0`` are written, not dropped as falsy.
- ``retry`` must be a non-negative ``int`` (the browser ignores anything else).
"""

from __future__ import annotations

import re

__all__ = ["comment", "encode_event", "split_lines"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Split ``text`` on the event-stream line ends (CRLF, CR, LF) only."""
    return _LINE_BREAK.split(text)


def _check_field(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name!r} must not contain CR or LF: {value!r}")
    return value


def comment(text: str = "") -> bytes:
    """Encode a comment block (ignored by clients; used for heartbeats).

    Every line of ``text`` becomes its own ``:`` line, so a comment can never
    turn into a field.
    """
    lines = split_lines(text) if text else [""]
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode() + b"\n"


def encode_event(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event block, ending with the blank line that dispatches it.

    :param data: the payload; multi-line text becomes several ``data:`` lines.
        ``None`` writes no ``data`` field (the block then sets ``id``/``retry``
        without dispatching an event).
    :param event: the event type (``addEventListener(event, ...)``).
    :param id: the event id the client sends back as ``Last-Event-ID``.
    :param retry: the reconnection time in milliseconds.
    :raises ValueError: if a field would inject a line or ``retry`` is negative.
    :raises TypeError: if ``retry`` is not an ``int``.
    """
    parts: list[str] = []
    if id is not None:
        value = _check_field("id", str(id))
        if "\0" in value:
            raise ValueError(f"SSE 'id' must not contain NUL: {value!r}")
        parts.append(f"id: {value}\n")
    if event is not None:
        parts.append(f"event: {_check_field('event', event)}\n")
    if data is not None:
        if "\n" in data or "\r" in data:
            parts.extend(f"data: {line}\n" for line in split_lines(data))
        else:  # one line (every notice: its JSON is compact): skip the split
            parts.append(f"data: {data}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int):
            raise TypeError(f"SSE 'retry' must be an int, got {type(retry).__name__}")
        if retry < 0:
            raise ValueError(f"SSE 'retry' must be >= 0, got {retry}")
        parts.append(f"retry: {retry}\n")
    parts.append("\n")
    return "".join(parts).encode()
