"""Where a stream stands on a store that keeps each audience in its own order (Redis Cluster).

A stream follows audiences: its user, the broadcasts (``*``) and each of its topics
(``#<topic>``). On a store with one order for everything, one id says where a stream
stands: every notice at or below it was sent. On Redis Cluster each audience is stored in
id order on its own shard, but one audience's notice may be stored after another's with a
later id, so a stream keeps a position per audience, and its SSE ``id`` is those positions
joined by ``.`` in the order user, broadcasts, then the topics as its ``?topics=`` lists
them: ``id: 1052.1040.1049``.

A plain ``N`` (what every other store sends) means ``N`` for each audience. A position with
another number of parts (the stream's topics changed) counts as its smallest part for
every audience: nothing is missed, and some notices may come twice. Pure.
"""

from __future__ import annotations

import typing as t

__all__ = ["BROADCAST_KEY", "Positions"]

#: The audience key of broadcasts (not a valid user id).
BROADCAST_KEY = "*"

#: The longest part of a position (as ``parse_cursor``: a 63-bit id).
_DIGITS = 19


class Positions:
    """A stream's newest id per audience, in the stream's order of audiences."""

    __slots__ = ("_index", "keys", "values")

    def __init__(self, keys: t.Sequence[str], values: t.Sequence[int]) -> None:
        #: The audiences: the user, ``*``, then ``#<topic>`` for each topic.
        self.keys = tuple(keys)
        #: The newest id sent per audience (every one at or below it was sent).
        self.values = list(values)
        self._index = {key: index for index, key in enumerate(self.keys)}

    @classmethod
    def parse(cls, keys: t.Sequence[str], text: str | None) -> Positions | None:
        """The positions a client sent (``Last-Event-ID``); ``None`` if it is none this server wrote."""
        if text is None:
            return None
        parts = text.strip().split(".")
        if not all(part.isascii() and part.isdigit() and len(part) <= _DIGITS for part in parts):
            return None
        numbers = [int(part) for part in parts]
        if len(numbers) != len(keys):
            numbers = [min(numbers)] * len(keys)
        return cls(keys, numbers)

    def get(self, key: str) -> int:
        """The position of audience ``key``."""
        return self.values[self._index[key]]

    def advance(self, key: str, seq: int) -> bool:
        """Move audience ``key`` to ``seq``; ``False`` if it stood there or beyond (a duplicate)."""
        index = self._index.get(key)
        if index is None or seq <= self.values[index]:
            return False
        self.values[index] = seq
        return True

    def encode(self) -> str:
        """The SSE ``id`` of these positions."""
        return ".".join(map(str, self.values))

    def id_line(self) -> bytes:
        """The ``id:`` line a frame sent at these positions starts with."""
        return b"id: " + ".".join(map(str, self.values)).encode() + b"\n"

    def __repr__(self) -> str:
        return f"Positions({dict(zip(self.keys, self.values, strict=True))!r})"
