"""The durable scheduler: work that falls due later, kept in the store, claimed by one worker. Pure code.

Scheduled notices, notices held for quiet hours, snoozed notices and fallbacks
(#9, #10) all wait for a time. None of them is a timer or a greenlet: each is an entry
in the store (:class:`SchedulerStore`), and every worker asks the store now and then
for what fell due. Each entry has a *kind* (what happens when it is due) and a *key*
(unique within its kind, so scheduling a key again replaces the entry: a new snooze time,
a new due time) and carries its kind's payload.

**Claims, not deletes.** :meth:`SchedulerStore.claim_due` takes due entries for a lease:
no other claim gets them until the lease ends. The claimant does the work, then
:meth:`SchedulerStore.finish` forgets them. A worker killed in between leaves its entries
to fall due again when the lease ends, and another worker claims them: nothing due is
lost, and the work must be idempotent (a publish under an idempotency key derived from
the entry) for it to happen once. ``finish`` forgets only what that claim took: an entry
scheduled again meanwhile stays.

Every store implements it atomically across processes and hosts (SQLite: one
``BEGIN IMMEDIATE`` transaction; Redis: one Lua script over a sorted set), and
``tests/brokers/contract.py`` holds them to the same contract.
"""

from __future__ import annotations

import typing as t

__all__ = ["Due", "SchedulerStore", "checked_kind"]


def checked_kind(kind: str) -> str:
    """``kind``, if it can name entries in every store (letters, digits, ``-`` and ``_``).

    :raises ValueError: if not (kinds are the code's own names, never a client's).
    """
    if not kind or not kind.isascii() or not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a scheduler kind is letters, digits, - and _: {kind!r}")
    return kind


class Due(t.NamedTuple):
    """An entry a claim took: what to do (``kind``, ``payload``), and the claim itself (``token``)."""

    kind: str
    key: str
    #: When it fell due (Unix time), as scheduled.
    due: float
    payload: str
    #: Identifies this claim: :meth:`SchedulerStore.finish` forgets the entry only while it is still its.
    token: int


class SchedulerStore(t.Protocol):
    """**Protocol:** entries that fall due later, claimed by one worker at a time."""

    def schedule(self, kind: str, key: str, due: float, payload: str) -> None:
        """Keep an entry until ``due`` (Unix time), replacing any entry of this kind and key.

        :raises ValueError: for a kind outside :func:`checked_kind`'s rule.
        """
        ...

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """:meth:`schedule` each ``(key, due, payload)`` of ``entries`` (in one call to the store)."""
        ...

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry of this kind and key, claimed or not; whether there was one."""
        ...

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key while it waits (claimed or not), else ``None``."""
        ...

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` entries due at ``now``, the earliest due first, for ``lease`` seconds.

        No other claim gets them before ``now + lease``; one not finished by then falls due again.
        """
        ...

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget entries these claims took (not one scheduled again, or claimed again, since)."""
        ...

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait, claimed or not."""
        ...
