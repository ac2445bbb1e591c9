"""Where else: a notice nobody read in-app goes to the user's other channels (#15).

**The rule** (:func:`pick`). A user's own notice (not a broadcast) goes to email, Web Push or the
webhook when, ``SSE_NOTIFY_FALLBACK_AFTER`` seconds after it was stored, it is still unread: not
read, archived, snoozed or removed. Whether the user had a stream open when it was delivered does
not change that: a tab that showed it without the user reading it did not make it seen. The
user's preferences per category and channel apply (``{"marketing": {"email": false}}``), and
their quiet hours hold the send until they end; a critical notice ignores both. Marking a notice
read before then cancels its fallback, on every channel.

**Digests.** Time is cut into windows of ``SSE_NOTIFY_FALLBACK_DIGEST`` seconds. Before a user's
notice is stored, the publish keeps one entry in the store's scheduler for that user and window
(kind :data:`FALLBACK`, key ``<window>:<user>``, due ``after`` seconds after the window ends);
more notices in the window keep the same entry. When it falls due, every notice of the user
stored in that window and still unread goes out as one message per channel: one email, one push
with a count, one webhook call. A notice thus goes out between ``after`` and ``after + digest``
seconds after it was stored.

**Once, durably.** The window's entry is kept *before* the notice is stored, so a worker killed
between the two leaves an entry that finds nothing, never a notice without one. Its action keeps
one :data:`SEND` entry per channel (key ``<channel>:<window>:<user>``). A worker sends it in a
greenlet of its own, so a slow provider never holds up the scheduler, publishing or streams,
and forgets it once the provider accepted it; the read state is checked again just before. A
failed send is kept again with a doubled delay (``SSE_NOTIFY_FALLBACK_BACKOFF``, at most an hour),
up to ``SSE_NOTIFY_FALLBACK_ATTEMPTS`` tries. A worker killed in the middle of a send leaves the
entry to fall due again when its lease ends: that one send may be repeated, nothing else is.
"""

from __future__ import annotations

import logging
import math
import time
import typing as t
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from . import telemetry
from .concurrency import spawn
from .delivery import Preferences
from .errors import BrokerError
from .notices import Notice, dumps

if t.TYPE_CHECKING:
    from .brokers.base import Broker
    from .inbox import InboxState
    from .schedule import Due

__all__ = [
    "FALLBACK",
    "SEND",
    "Channel",
    "Fallbacks",
    "Message",
    "RecordStore",
    "SendFailed",
    "Timing",
    "pick",
]

log = logging.getLogger("sse_notify.fallback")

#: Scheduler kinds: a user's window of notices to look at, and one message to send on one channel.
FALLBACK, SEND = "fallback", "send"
#: Notices read from a user's inbox per store call while looking for a window's.
_PAGE = 50
#: The longest wait between two tries of a failed send (seconds).
MAX_BACKOFF = 3600.0


class RecordStore(t.Protocol):
    """**Protocol:** small per-user records of a kind (``contacts``, ``push``), part of every store."""

    def user_records(self, kind: str, user_id: str) -> dict[str, str]:
        """The user's records of ``kind``, by name."""
        ...

    def set_user_record(self, kind: str, user_id: str, name: str, text: str | None) -> bool:
        """Keep (or, with ``None``, forget) one record; whether it existed before."""
        ...


@dataclass(frozen=True, slots=True)
class Timing:
    """When a window's notices are looked at: ``after`` seconds after a window of ``digest`` seconds ends."""

    after: float
    digest: float

    def window(self, when: float) -> int:
        """The window that holds Unix time ``when``."""
        return math.floor(when / self.digest)

    def due(self, window: int) -> float:
        """When ``window``'s notices are looked at."""
        return (window + 1) * self.digest + self.after

    def bounds(self, window: int) -> tuple[float, float]:
        """``[start, end)`` of ``window`` (Unix time)."""
        return window * self.digest, (window + 1) * self.digest


def stored_at(notice: Notice) -> float:
    """When ``notice`` was stored (Unix time)."""
    return datetime.fromisoformat(notice.created_at.replace("Z", "+00:00")).timestamp()  # (3.10 reads no Z)


def unread(notice: Notice, state: InboxState, now: float) -> bool:
    """Whether the user has not seen ``notice``: not read, archived or snoozed."""
    return not (state.is_read(notice.id) or notice.id in state.archived or state.is_snoozed(notice.id, now))


def pick(
    notices: t.Sequence[Notice], state: InboxState, preferences: Preferences, channel: str, now: float
) -> tuple[list[int], float] | None:
    """Which of a window's ``notices`` go to ``channel``, and when; ``None`` if none does.

    Unread notices the user wants on ``channel`` (critical ones always) go at ``now``, or when
    the user's quiet hours end, unless one of them is critical: then all go at ``now``.
    """
    chosen: list[Notice] = []
    critical = False
    for notice in notices:
        if not unread(notice, state, now):
            continue
        meta = notice.meta
        if meta.get("critical"):
            critical = True
        elif not preferences.wants(meta.get("category"), channel):
            continue
        chosen.append(notice)
    if not chosen:
        return None
    due = now
    if not critical and preferences.quiet_hours is not None:
        due = preferences.quiet_hours.until(now) or now
    return [notice.id for notice in chosen], due


@dataclass(frozen=True, slots=True)
class Message:
    """One send: a user's unread notices for one channel."""

    user_id: str
    notices: list[Notice]
    #: The same for every try of this send (a Standard Webhooks ``webhook-id``, a push ``Topic``...).
    key: str
    #: Which try this is (0: the first).
    attempt: int
    #: What a channel kept from an earlier try (e.g. the push subscriptions still to send to).
    state: t.Mapping[str, t.Any] = field(default_factory=dict)


class SendFailed(Exception):
    """A send did not go through: tried again later unless ``permanent``.

    ``state`` replaces the send's state for the next try (a channel that reached some of a
    user's devices sends only to the others then).
    """

    def __init__(self, reason: str, *, permanent: bool = False, state: t.Mapping[str, t.Any] | None = None):
        super().__init__(reason)
        self.permanent = permanent
        self.state = state


class Channel(t.Protocol):
    """**Protocol:** a way to reach a user outside the app (``channels/``)."""

    #: ``email``, ``push`` or ``webhook``: the name preferences use.
    name: str

    def reachable(self, user_id: str) -> bool:
        """Whether the user can be reached this way (has an address, a push subscription...)."""
        ...

    def send(self, message: Message) -> None:
        """Send one message, within the channel's timeout.

        :raises SendFailed: if it did not go through.
        """
        ...


class Fallbacks:
    """Runs the rule on the store's scheduler for one app: the two kinds' actions, and the publish hook."""

    #: Sends in flight per channel in one process; more wait for a later claim.
    CONCURRENCY = 20

    def __init__(
        self,
        broker: Broker,
        channels: t.Sequence[Channel],
        timing: Timing,
        preferences: t.Callable[[str], Preferences],
        *,
        backoff: float,
        attempts: int,
    ) -> None:
        self.broker = broker
        self.channels = {channel.name: channel for channel in channels}
        self.timing = timing
        self.preferences = preferences
        self.backoff = backoff
        self.attempts = attempts
        self._in_flight = dict.fromkeys(self.channels, 0)
        #: Windows this process has kept an entry for: window -> users (the last two windows).
        self._kept: dict[int, set[str]] = {}

    # -- the publish hook ---------------------------------------------------

    def before_publish(self, user_ids: t.Iterable[str], now: float | None = None) -> None:
        """Keep the window entry of each user about to get a notice (one store call, if any is new).

        :raises BrokerError: if the store could not keep them (the publish must not go on).
        """
        self._keep(user_ids, self.timing.window(time.time() if now is None else now))

    def after_publish(self, notices: t.Iterable[Notice]) -> None:
        """Keep the entry of a notice that the store dated in the next window (a publish at its edge)."""
        for notice in notices:
            if notice.user_id is not None:
                window = self.timing.window(stored_at(notice))
                if notice.user_id not in self._kept.get(window, ()):
                    self._keep([notice.user_id], window)

    def _keep(self, user_ids: t.Iterable[str], window: int) -> None:
        kept = self._kept.get(window)
        if kept is None:
            self._kept = {w: users for w, users in self._kept.items() if w >= window - 1}
            kept = self._kept[window] = set()
        new = [user_id for user_id in dict.fromkeys(user_ids) if user_id not in kept]
        if not new:
            return
        due = self.timing.due(window)
        self.broker.schedule_many(FALLBACK, [(f"{window}:{user_id}", due, "") for user_id in new])
        kept.update(new)

    # -- the scheduler's actions ------------------------------------------------

    def collect(self, due: Due) -> None:
        """A window fell due: keep a send per channel for the user's notices still unread."""
        window_text, _, user_id = due.key.partition(":")
        window = int(window_text)
        notices = self._window(user_id, window)
        if not notices:
            return
        state = self.broker.inbox_state(user_id)
        preferences = self.preferences(user_id)
        now = time.time()
        sends: list[tuple[str, float, str]] = []
        for name, channel in self.channels.items():
            picked = pick(notices, state, preferences, name, now)
            if picked is not None and channel.reachable(user_id):
                ids, when = picked
                sends.append((f"{name}:{window}:{user_id}", when, dumps({"ids": ids, "n": 0})))
        self.broker.schedule_many(SEND, sends)

    def _window(self, user_id: str, window: int) -> list[Notice]:
        """The user's own notices stored in ``window``, oldest first."""
        start, end = self.timing.bounds(window)
        ids = self.broker.inbox_ids(user_id)  # newest first
        found: list[Notice] = []
        for offset in range(0, len(ids), _PAGE):
            page = self.broker.inbox_notices(user_id, ids[offset : offset + _PAGE])
            older = 0
            for notice in page:
                at = stored_at(notice)
                if at < start:
                    older += 1
                elif at < end and notice.user_id is not None:
                    found.append(notice)
            if page and older == len(page):
                break  # (ids grow with time: the rest are older still)
        found.sort(key=lambda notice: notice.id)
        return found

    def send(self, due: Due) -> bool:
        """A send fell due: hand it to a greenlet of its own (``False``: that greenlet finishes it)."""
        name = due.key.partition(":")[0]
        if name not in self.channels:  # the channel was turned off since: forget it
            return True
        if self._in_flight[name] >= self.CONCURRENCY:
            return False  # busy: its lease ends and a later claim takes it
        self._in_flight[name] += 1
        spawn(lambda: self._send(due, name), name=f"sse-notify-{name}")
        return False

    def _send(self, due: Due, name: str) -> None:
        try:
            self._try(due, name)
        except BrokerError as exc:  # the entry's lease ends and it is tried again
            telemetry.store_failed("fallback", exc)
        except Exception:
            log.exception("fallback %r failed; tried again when its lease ends", due.key)
        finally:
            self._in_flight[name] -= 1

    def _try(self, due: Due, name: str) -> None:
        user_id = due.key.split(":", 2)[2]
        entry = orjson.loads(due.payload)
        attempt = int(entry.get("n", 0))
        now = time.time()
        state = self.broker.inbox_state(user_id)
        notices = [n for n in self.broker.inbox_notices(user_id, entry["ids"]) if unread(n, state, now)]
        if notices:
            message = Message(user_id, notices, due.key, attempt, entry.get("state") or {})
            try:
                self.channels[name].send(message)
            except SendFailed as exc:
                self._failed(due, name, user_id, entry, exc)
            else:
                telemetry.fallback_sent(name, user_id, len(notices))
        self.broker.finish([due])

    def _failed(self, due: Due, name: str, user_id: str, entry: dict[str, t.Any], exc: SendFailed) -> None:
        """Keep the send again for a later try, or give it up (a permanent refusal, the last try)."""
        attempt = int(entry.get("n", 0)) + 1
        if exc.permanent or attempt >= self.attempts:
            telemetry.fallback_failed(name, user_id, str(exc), None)
            return
        delay = min(MAX_BACKOFF, self.backoff * 2 ** (attempt - 1))
        again = {**entry, "n": attempt}
        if exc.state is not None:
            again["state"] = dict(exc.state)
        self.broker.schedule(SEND, due.key, time.time() + delay, dumps(again))
        telemetry.fallback_failed(name, user_id, str(exc), delay)
