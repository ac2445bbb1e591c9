"""The notice: what a publisher sends and every subscriber receives. Pure code."""

from __future__ import annotations

import json
import re
import typing as t
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "BROADCAST",
    "USER_ID_PATTERN",
    "Notice",
    "dumps",
    "is_valid_user_id",
    "utc_iso",
    "utc_iso_ago",
    "utc_now_iso",
]

#: ``user_id`` of a notice sent to every user.
BROADCAST: None = None

#: What a user id may be: 1 to 128 of ASCII letters, digits and ``_ . @ : + -``.
#: Anything else is refused with 400 before it reaches a store or a stream.
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@:+\-]{1,128}")


def is_valid_user_id(user_id: object) -> bool:
    """Whether ``user_id`` is a string that fits :data:`USER_ID_PATTERN`."""
    return isinstance(user_id, str) and USER_ID_PATTERN.fullmatch(user_id) is not None


def dumps(value: object) -> str:
    """Compact one-line JSON (never contains CR or LF; NaN is refused)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utc_iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC with milliseconds, e.g. ``2026-11-22T15:04:05.123Z``.

    Fixed width, so these strings sort in time order.
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso() -> str:
    """Now, as :func:`utc_iso` writes it."""
    return utc_iso(datetime.now(timezone.utc))


def utc_iso_ago(seconds: float) -> str:
    """The moment ``seconds`` ago, as :func:`utc_iso` writes it."""
    return utc_iso(datetime.now(timezone.utc) - timedelta(seconds=seconds))


@dataclass(frozen=True, slots=True)
class Notice:
    """A stored notice.

    ``id`` is the store's cursor: it grows with every notice (whatever the user),
    so "everything after cursor N" is well defined for resume. ``data_json`` is
    the publisher's JSON object, kept as text so it is encoded once.
    """

    id: int
    user_id: str | None
    created_at: str
    data_json: str

    @property
    def is_broadcast(self) -> bool:
        """Whether this notice goes to every user."""
        return self.user_id is None

    @property
    def data(self) -> dict[str, t.Any]:
        """The publisher's JSON object."""
        value: dict[str, t.Any] = json.loads(self.data_json)
        return value

    def to_json(self) -> str:
        """The notice as one line of JSON: the ``data:`` of its SSE event and the 201 body."""
        user = "null" if self.user_id is None else dumps(self.user_id)
        return f'{{"id":{self.id},"user_id":{user},"created_at":"{self.created_at}","data":{self.data_json}}}'

    def to_dict(self) -> dict[str, t.Any]:
        """The notice as a dict (same shape as :meth:`to_json`)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "data": self.data,
        }
