"""A user's inbox: read and archived state over the stored notices. Pure code.

Every store keeps the same small state per user (see :class:`InboxState`):

- ``through``: everything up to this cursor is read (``read-all`` moves it);
- explicit marks per notice: read or unread (overriding ``through``), archived.

The inbox of a user is what replay would send them: their own notices and the
broadcasts the store still holds. Listing, filtering, paging and the unread
count are computed here, the same way for every backend, from the cursors the
store returns (:meth:`Inbox.ids`, newest first) and this state.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from .control import Control, Kind
from .delivery import DEFAULT_PREFERENCES, Preferences
from .errors import Conflict, NoticeNotFound
from .notices import Notice, utc_iso

__all__ = [
    "InboxFilter",
    "InboxItem",
    "InboxPage",
    "InboxState",
    "InboxStore",
    "StateChange",
    "change",
    "list_page",
    "read_all",
    "remove",
    "returned",
    "snapshot",
    "snooze",
]


@dataclass(frozen=True, slots=True)
class InboxState:
    """One user's read and archived marks."""

    #: Every notice at or below this cursor is read, unless marked unread.
    through: int = 0
    #: Explicit marks: ``True`` read, ``False`` unread.
    read: t.Mapping[int, bool] = field(default_factory=dict)
    archived: frozenset[int] = frozenset()
    #: Snoozed notices: until when (Unix time). Hidden, and not counted, until then.
    snoozed: t.Mapping[int, float] = field(default_factory=dict)

    def is_read(self, seq: int) -> bool:
        """Whether notice ``seq`` is read."""
        return self.read.get(seq, seq <= self.through)

    def is_snoozed(self, seq: int, now: float | None = None) -> bool:
        """Whether notice ``seq`` is snoozed (at ``now``, default: now)."""
        until = self.snoozed.get(seq)
        return until is not None and until > (time.time() if now is None else now)

    def unread(self, ids: t.Iterable[int]) -> int:
        """How many of ``ids`` are unread, not archived and not snoozed."""
        now = time.time()
        return sum(
            1
            for seq in ids
            if seq not in self.archived and not self.is_read(seq) and not self.is_snoozed(seq, now)
        )


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A notice as the inbox shows it: with its state."""

    notice: Notice
    read: bool
    archived: bool

    def fields(self) -> dict[str, t.Any]:
        """The notice's JSON object (:meth:`Notice.fields`) plus ``read`` and ``archived``."""
        return {**self.notice.fields(), "read": self.read, "archived": self.archived}

    def to_json(self) -> str:
        """:meth:`fields` as JSON."""
        return orjson.dumps(self.fields()).decode()


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of a listing, newest first."""

    items: list[InboxItem]
    #: Unread, unarchived notices in the whole inbox (not only this page).
    unread: int
    #: The ``before`` of the next page, ``None`` on the last one.
    next: int | None
    #: The newest id in the whole inbox, archived or not (0: empty).
    newest: int = 0

    def to_json(self) -> bytes:
        """``{"notices": [...], "unread": n, "next": id|null}``."""
        notices = [item.fields() for item in self.items]
        return orjson.dumps({"notices": notices, "unread": self.unread, "next": self.next})


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a mark changed, as pushed to the user's streams (event ``read``, ``archive`` or ``remove``)."""

    user_id: str
    event: str
    ids: list[int]
    value: bool
    unread: int
    #: For ``read-all``: the cursor everything up to is now read.
    through: int | None = None
    #: For ``snooze``: until when (``utc_iso``).
    until: str | None = None

    def payload(self) -> dict[str, t.Any]:
        """The ``data`` of the SSE event."""
        field = {"read": "read", "archive": "archived", "remove": "removed", "snooze": "snoozed"}[self.event]
        body: dict[str, t.Any] = {"ids": self.ids, field: self.value}
        if self.until is not None:
            body["until"] = self.until
        if self.through is not None:
            body["all"] = True
            body["through"] = self.through
        body["unread"] = self.unread
        return body

    def to_control(self) -> Control:
        """The control record that takes this change to the user's streams on every worker."""
        return Control(Kind.STATE, self.user_id, {"event": self.event, "data": self.payload()})


class InboxStore(t.Protocol):
    """**Protocol:** what a store keeps for inboxes (part of every store's ``Broker``)."""

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's stored notices and the stored broadcasts, newest first."""
        ...

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""
        ...

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks."""
        ...

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set ``read`` and/or ``archived`` on these notices of the user (atomic)."""
        ...

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Mark every notice up to ``through`` read (explicit marks at or below it are dropped)."""
        ...

    def snooze(self, user_id: str, seq: int, until: float) -> None:
        """Snooze the user's notice ``seq`` until ``until`` (Unix time), replacing an earlier snooze."""
        ...

    def wake(self, user_id: str, seq: int, until: float) -> bool:
        """End the snooze of ``seq`` if it is still the one until ``until``, and mark it unread (atomic).

        Returns whether it did: a snooze moved or ended meanwhile is left alone.
        """
        ...

    def delete_notices(self, user_id: str, ids: t.Sequence[int]) -> list[int]:
        """Remove these notices, where they are the user's own (not broadcasts), and their marks.

        They are no longer listed, counted or replayed. Returns the ids removed, in order.
        """
        ...


class InboxFilter(t.TypedDict, total=False):
    """Which page of an inbox :func:`list_page` answers (each key optional)."""

    #: Only notices older than this id (the previous page's ``next``).
    before: int | None
    #: Notices per page (20).
    limit: int
    #: Only unread notices.
    unread_only: bool
    #: Only archived notices (instead of only those not archived).
    archived: bool
    #: Only snoozed notices (instead of only those not snoozed).
    snoozed: bool


def list_page(
    store: InboxStore,
    user_id: str,
    *,
    before: int | None = None,
    limit: int = 20,
    unread_only: bool = False,
    archived: bool = False,
    snoozed: bool = False,
    preferences: Preferences = DEFAULT_PREFERENCES,
) -> InboxPage:
    """A page of the user's inbox, newest first: archived notices only, or only those not archived.

    Broadcasts in a category the user muted (``preferences``) are not listed or counted.
    """
    ids = _listed(store, user_id, preferences)
    if not ids:  # nothing stored for this user: no state to read (one query per new stream)
        return InboxPage([], 0, None)
    state = store.inbox_state(user_id)
    chosen: list[int] = []
    more = False
    now = time.time()
    for seq in ids:
        if before is not None and seq >= before:
            continue
        if (seq in state.archived) != archived or state.is_snoozed(seq, now) != snoozed:
            continue
        if unread_only and state.is_read(seq):
            continue
        if len(chosen) == limit:
            more = True
            break
        chosen.append(seq)
    items = [
        InboxItem(n, state.is_read(n.id), n.id in state.archived)
        for n in store.inbox_notices(user_id, chosen)
    ]
    return InboxPage(items, state.unread(ids), chosen[-1] if more and chosen else None, ids[0])


def _listed(store: InboxStore, user_id: str, preferences: Preferences) -> list[int]:
    """The ids in the user's inbox, newest first, without the broadcasts they muted."""
    ids = store.inbox_ids(user_id)
    return _wanted(store, user_id, ids, preferences) if ids and preferences.mutes else ids


def _wanted(store: InboxStore, user_id: str, ids: list[int], preferences: Preferences) -> list[int]:
    """``ids`` without the broadcasts the user muted (reads every notice: only for users with mutes)."""
    muted = {
        n.id
        for n in store.inbox_notices(user_id, ids)
        if n.user_id is None
        and n.meta_json
        and not n.meta.get("critical")
        and not preferences.wants(n.meta.get("category"))
    }
    return [seq for seq in ids if seq not in muted] if muted else ids


def change(
    store: InboxStore,
    user_id: str,
    ids: t.Sequence[int],
    *,
    read: bool | None = None,
    archived: bool | None = None,
    preferences: Preferences = DEFAULT_PREFERENCES,
) -> StateChange:
    """Mark notices of the user; :class:`NoticeNotFound` if one is not in their inbox."""
    present = set(_listed(store, user_id, preferences))
    for seq in ids:
        if seq not in present:
            raise NoticeNotFound(f"notice {seq} is not in {user_id}'s inbox (never sent to them, or expired)")
    store.mark(user_id, ids, read=read, archived=archived)
    unread = store.inbox_state(user_id).unread(present)
    if read is not None:
        return StateChange(user_id, "read", list(ids), read, unread)
    return StateChange(user_id, "archive", list(ids), bool(archived), unread)


def remove(store: InboxStore, user_id: str, ids: t.Sequence[int], preferences: Preferences) -> StateChange:
    """Remove notices from the user's inbox (their own: a broadcast is only archived for them).

    :raises NoticeNotFound: if one is not in the inbox.
    :raises Conflict: for a broadcast (it stays in every other user's inbox).
    """
    present = set(_listed(store, user_id, preferences))
    for seq in ids:
        if seq not in present:
            raise NoticeNotFound(f"notice {seq} is not in {user_id}'s inbox (never sent to them, or expired)")
    for notice in store.inbox_notices(user_id, ids):
        if notice.user_id is None:
            raise Conflict(
                f"notice {notice.id} is a broadcast: it cannot be removed from one inbox (archive it instead)"
            )
    removed = store.delete_notices(user_id, ids)
    unread = store.inbox_state(user_id).unread(present - set(removed))
    return StateChange(user_id, "remove", removed, True, unread)


def snooze(
    store: InboxStore, user_id: str, seq: int, until: float, preferences: Preferences = DEFAULT_PREFERENCES
) -> StateChange:
    """Snooze a notice of the user's inbox until ``until``: hidden and not counted until then.

    :raises NoticeNotFound: if it is not in the inbox.
    """
    present = set(_listed(store, user_id, preferences))
    if seq not in present:
        raise NoticeNotFound(f"notice {seq} is not in {user_id}'s inbox (never sent to them, or expired)")
    store.snooze(user_id, seq, until)
    unread = store.inbox_state(user_id).unread(present)
    return StateChange(
        user_id, "snooze", [seq], True, unread, until=utc_iso(datetime.fromtimestamp(until, timezone.utc))
    )


def returned(
    store: InboxStore, user_id: str, seq: int, preferences: Preferences = DEFAULT_PREFERENCES
) -> Control | None:
    """What tells the user's streams that a snoozed notice is back, unread: a ``notice`` event without an id.

    Its data is the notice as the inbox lists it, with ``"returned": "snooze"`` and the unread count
    (``None`` if the notice is no longer stored).
    """
    found = store.inbox_notices(user_id, [seq])
    if not found:
        return None
    state = store.inbox_state(user_id)
    item = InboxItem(found[0], state.is_read(seq), seq in state.archived).fields()
    unread = state.unread(_listed(store, user_id, preferences))
    return Control(
        Kind.STATE, user_id, {"event": "notice", "data": {**item, "returned": "snooze", "unread": unread}}
    )


def read_all(store: InboxStore, user_id: str, preferences: Preferences = DEFAULT_PREFERENCES) -> StateChange:
    """Mark everything in the user's inbox read."""
    ids = _listed(store, user_id, preferences)
    through = ids[0] if ids else 0
    if through:
        store.mark_read_through(user_id, through)
    unread = store.inbox_state(user_id).unread(ids)
    return StateChange(user_id, "read", [], True, unread, through=through)


def snapshot(
    store: InboxStore, user_id: str, size: int, preferences: Preferences = DEFAULT_PREFERENCES
) -> str:
    """The ``snapshot`` event's data: ``{"unread": n, "cursor": id, "notices": [...], "preferences": {...}}``.

    ``notices`` are the newest ``size`` not archived; ``cursor`` is the newest id
    in the inbox when it was taken (0: none), so a client knows that a replayed
    notice at or below it is already counted, listed or not.
    """
    page = list_page(store, user_id, limit=size, preferences=preferences)
    notices = [item.fields() for item in page.items]
    body = {"unread": page.unread, "cursor": page.newest, "notices": notices}
    body["preferences"] = _DEFAULT_FIELDS if preferences is DEFAULT_PREFERENCES else preferences.to_dict()
    return orjson.dumps(body).decode()


_DEFAULT_FIELDS = DEFAULT_PREFERENCES.to_dict()
