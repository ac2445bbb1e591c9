"""Control records: what travels on the store's feed beside notices, typed. Pure code.

A notice is for a user's inbox and is replayed; a control record only tells every
worker's hub (on every host) to do something to the streams it holds, and is never
replayed. They share the feed so that a control record reaches every worker the way a
notice does, in order with the notices around it. Each :class:`Kind` has one handler in
the hub (``Hub.handle_control``); a new kind is a member here and a handler there.

In a store a record is kept as JSON (:meth:`Control.to_json`) under a key that is not a
valid user id (``CONTROL_KEY`` in ``brokers/base.py``), so no user's replay or inbox
ever holds one.
"""

from __future__ import annotations

import enum
import typing as t
from dataclasses import dataclass, field

import orjson

__all__ = ["Control", "Kind"]


class Kind(enum.Enum):
    """What a control record asks every hub to do."""

    #: Close every stream of ``user_id`` (a logout, a ban).
    KICK = "kick"
    #: Send ``user_id``'s streams an inbox change: ``data`` is ``{"event": name, "data": {...}}``.
    STATE = "state"
    #: The feed lost notices it cannot recover live: every stream resumes from its own cursor.
    RESYNC = "resync"
    #: ``user_id`` changed their preferences: ``data`` is them (``Preferences.to_dict``).
    PREFERENCES = "preferences"


@dataclass(frozen=True, slots=True)
class Control:
    """One control record: a :class:`Kind`, the user it is about (if any), and its data."""

    kind: Kind
    user_id: str | None = None
    data: t.Mapping[str, t.Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The record as one line of JSON, as a store keeps it."""
        return orjson.dumps({"kind": self.kind.value, "user_id": self.user_id, "data": self.data}).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Control:
        """The record :meth:`to_json` wrote.

        :raises ValueError: for text that is not such a record, or a kind this version does not
            know (a newer worker's, during a rolling upgrade: the caller skips it).
        """
        value = orjson.loads(text)
        if not isinstance(value, dict) or not isinstance(value.get("data"), dict):
            raise ValueError(f"not a control record: {text[:100]!r}")
        user_id = value.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise ValueError(f"not a control record: {text[:100]!r}")
        return cls(Kind(value.get("kind")), user_id, value["data"])
