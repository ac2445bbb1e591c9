"""Presence: which users have streams open, counted over every worker and host. Pure code.

Each worker's hub knows its own streams per user. Every
``SSE_NOTIFY_PRESENCE_INTERVAL`` seconds it writes the counts that changed to
the store under its worker id, and renews its lifetime there
(:data:`LIFETIME_INTERVALS` intervals). A query sums the counts of the workers
still alive. A worker that stops cleanly removes its counts; one that is
killed is left out once its lifetime runs out.

The counts are written in batches, not at every open and close, so opening a
stream costs no store write (a write per open would be thousands of writes a
second at the rates in docs/BENCHMARKS.md). The price is lag: another worker's
new stream is counted within one interval; the asking worker's own streams are
written before it answers, so they count at once.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

__all__ = ["LIFETIME_INTERVALS", "Presence", "PresenceStore"]

#: A worker that has not written for this many intervals is taken for dead.
LIFETIME_INTERVALS = 10


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether a user is online: their open streams on every worker and host."""

    user_id: str
    streams: int

    @property
    def online(self) -> bool:
        """Whether the user has at least one stream open."""
        return self.streams > 0

    def to_dict(self) -> dict[str, t.Any]:
        """The JSON body of ``GET /users/<id>/presence``."""
        return {"user_id": self.user_id, "online": self.online, "streams": self.streams}


class PresenceStore(t.Protocol):
    """**Protocol:** where workers share their open streams per user."""

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set ``worker``'s open streams of these users (0: none) and keep it alive for ``ttl`` seconds."""
        ...

    def presence_leave(self, worker: str) -> None:
        """Forget ``worker`` and its counts (it stopped)."""
        ...

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user, summed over the workers still alive (users with none left out)."""
        ...
