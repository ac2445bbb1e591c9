"""What, when and how often: delivery options, a user's preferences, and what a publish did. Pure code.

A publisher sets **options** beside a notice's data, never inside it (query parameters of a
single publish or a broadcast, keys of each item of ``POST /notices``, keyword arguments in
Python): ``category``, ``critical``, ``send_at`` or ``delay``, ``group``. :func:`checked_options`
is the one check of all three forms.

A user sets **preferences** (:class:`Preferences`): per category and channel whether they want
it (``{"marketing": {"in_app": false}}``), a default for categories not listed, and quiet hours in
their own time zone. :meth:`Preferences.decide` is the one rule that says, for a notice, whether it
goes now, waits for the end of quiet hours, or is not delivered at all.

What a publish did, per recipient, is a :class:`Receipt`: ``delivered``, ``scheduled``, ``held``
(quiet hours) or ``suppressed`` (and why).
"""

from __future__ import annotations

import functools
import math
import re
import typing as t
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from .errors import InvalidOption
from .notices import (
    HEADER_MARK,
    TOPIC_MARK,
    USER_ID_PATTERN,
    USER_ID_RULE,
    Notice,
    dumps,
    embedded_fields,
    loads,
    parse_flag,
    stored_text,
    topic_of,
    utc_iso,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_PREFERENCES",
    "DELIVERED",
    "GROUP_RECENT",
    "HELD",
    "MAX_DELAY",
    "NO_OPTIONS",
    "OPTIONS",
    "SCHEDULED",
    "SUPPRESSED",
    "Delivery",
    "Options",
    "PreferenceStore",
    "Preferences",
    "QuietHours",
    "Receipt",
    "checked_options",
    "checked_seconds",
    "fold",
    "group_key",
    "merge_group",
    "parse_time",
]

#: The delivery options a publish may carry, beside its data.
OPTIONS = ("category", "critical", "send_at", "delay", "group")
#: The furthest ahead a notice may be scheduled (seconds).
MAX_DELAY = 366 * 86400
#: The channels a preference may name: in the app, and those a notice falls back to (``fallback.py``).
CHANNELS = ("in_app", "email", "push", "webhook")
#: The most categories one user's preferences may list.
MAX_CATEGORIES = 200

#: :class:`Receipt` statuses.
DELIVERED, SCHEDULED, HELD, SUPPRESSED = "delivered", "scheduled", "held", "suppressed"

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _refuse(option: str, rule: str, value: object, where: str = "") -> t.NoReturn:
    shown = value[:140] if isinstance(value, str) else value
    raise InvalidOption(f"{where}{option} must be {rule}, got {shown!r}", option)


def parse_time(value: object, option: str = "send_at") -> float:
    """An RFC 3339 time (``2026-12-24T18:00:00+01:00``) or an aware ``datetime``, as Unix time.

    :raises InvalidOption: naming ``option``, for anything else (a time without its offset too).
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            _refuse(option, "a datetime with a time zone", value)
        return value.timestamp()
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        _refuse(option, "an RFC 3339 time with its offset, e.g. 2026-12-24T18:00:00Z", value)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        zone = timezone.utc
        if offset not in {"Z", "z"}:
            sign = 1 if offset[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), tzinfo=zone
        )
    except ValueError:
        _refuse(option, "an RFC 3339 time that exists", value)
    return moment.timestamp() + (float(fraction) if fraction else 0.0)


def _flag(value: object, option: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    flag = parse_flag(value) if isinstance(value, str) else None
    if flag is None:
        _refuse(option, "true or false", value, where)
    return flag


def _name(value: object, option: str, where: str) -> str:
    if isinstance(value, str) and USER_ID_PATTERN.fullmatch(value):
        return value
    _refuse(option, USER_ID_RULE, value, where)


def _seconds(value: object, option: str, where: str, high: float) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0 <= number <= high:
        _refuse(option, f"a number of seconds from 0 to {int(high)}", value, where)
    return number


def checked_seconds(value: object, option: str, high: float = MAX_DELAY) -> float:
    """A number of seconds from 0 to ``high`` (a number, or text of one), else :class:`InvalidOption`."""
    return _seconds(value, option, "", high)


@dataclass(frozen=True, slots=True)
class Options:
    """A notice's delivery options (see the module docstring); the defaults deliver at once."""

    #: The notice's category (preferences mute categories), or ``None``.
    category: str | None = None
    #: Whether it ignores mutes and quiet hours.
    critical: bool = False
    #: When it is due (Unix time), or ``None`` for now.
    due: float | None = None
    #: Notices to one user with the same group key fold into one inbox entry.
    group: str | None = None

    def meta(self) -> dict[str, t.Any]:
        """The delivery fields a notice keeps and shows beside its data."""
        fields: dict[str, t.Any] = {}
        if self.category is not None:
            fields["category"] = self.category
        if self.critical:
            fields["critical"] = True
        return fields

    def meta_json(self, data_json: str = "{}") -> str:
        """:meth:`meta` as JSON (``""``: none), with the notice's ``group`` (:func:`fold`) if it has one."""
        fields = self.meta()
        if self.group is not None:
            fields["group"] = {"key": self.group, "count": 1, "recent": [loads(data_json)]}
        return dumps(fields) if fields else ""


# -- grouping ----------------------------------------------------------------------

#: How many of the latest data items a grouped entry keeps (newest first).
GROUP_RECENT = 5


def group_key(text: str) -> str | None:
    """The group key of a notice a store is given (its stored text), or ``None``."""
    if (
        type(text) is not str
        or text[:1] != HEADER_MARK
        or '"group"' not in text[: text.index(HEADER_MARK, 1)]
    ):
        return None
    return t.cast(str, Notice.stored(0, None, "", text).meta["group"]["key"])


def fold(text: str, created_at: str, previous: Notice | None) -> str:
    """The stored text of a grouped notice, folded into ``previous`` (the group's unread entry, if any).

    The entry keeps the newest data as its ``data``, and in its ``group``: ``count`` (how many
    notices it stands for), ``first_at`` and ``last_at``, ``recent`` (the newest
    :data:`GROUP_RECENT` data items, newest first) and ``replaces`` (the id of the entry it
    replaces). Every store calls this inside its own transaction, so concurrent publishes fold
    one after another.
    """
    notice = Notice.stored(0, None, created_at, text)
    meta = notice.meta
    group = meta["group"]
    count, recent, first_at = int(group["count"]), list(group["recent"]), created_at
    folded = {"key": group["key"]}
    if previous is not None:
        earlier = previous.meta["group"]
        count += int(earlier["count"])
        recent += earlier["recent"]
        first_at = earlier["first_at"]
    folded.update(count=count, first_at=first_at, last_at=created_at, recent=recent[:GROUP_RECENT])
    if previous is not None:
        folded["replaces"] = previous.id
    return stored_text(notice.data_json, dumps({**meta, "group": folded}))


def merge_group(earlier: str, later: str) -> str:
    """Two notices of one user and group in one publish, as one (the later's data, both counted)."""
    first, second = Notice.stored(0, None, "", earlier), Notice.stored(0, None, "", later)
    a, b = first.meta["group"], second.meta["group"]
    recent = (b["recent"] + a["recent"])[:GROUP_RECENT]
    merged = {"key": b["key"], "count": a["count"] + b["count"], "recent": recent}
    return stored_text(second.data_json, dumps({**second.meta, "group": merged}))


#: Options of a notice that has none.
NO_OPTIONS = Options()


class Delivery(t.TypedDict, total=False):
    """The keyword arguments of ``notify()``, ``broadcast()`` and ``notify_many()``."""

    category: str | None
    critical: bool
    #: An aware ``datetime``, or RFC 3339 text.
    send_at: datetime | str | None
    #: Seconds from now.
    delay: float | None
    group: str | None
    #: Store once per key (see ``State.publish_once``).
    idempotency_key: str | None
    #: Write in the app's open transaction: a SQLAlchemy ``Session`` or ``Connection``, or a
    #: DB-API connection, on the PostgreSQL store's database (see ``State.deliver``).
    connection: t.Any


def checked_options(values: t.Mapping[str, t.Any], *, now: float, where: str = "") -> Options:
    """The options in ``values`` (query strings, JSON values, or Python arguments), checked.

    Keys other than :data:`OPTIONS` are not looked at (the caller refuses them if it must).
    ``send_at`` or ``delay`` at or before ``now`` means now.

    :param where: what an error message starts with (``"notice 3: "`` in a batch).
    :raises InvalidOption: naming the option, for a bad value, both ``send_at`` and ``delay``,
        or a time more than :data:`MAX_DELAY` ahead.
    """
    category = values.get("category")
    group = values.get("group")
    critical = values.get("critical")
    send_at = values.get("send_at")
    delay = values.get("delay")
    if send_at is not None and delay is not None:
        raise InvalidOption(f"{where}give send_at or delay, not both", "send_at")
    due: float | None = None
    if delay is not None:
        due = now + _seconds(delay, "delay", where, MAX_DELAY)
    elif send_at is not None:
        try:
            due = parse_time(send_at)
        except InvalidOption as exc:
            raise InvalidOption(f"{where}{exc}", "send_at") from None
        if due > now + MAX_DELAY:
            raise InvalidOption(f"{where}send_at must be at most {MAX_DELAY // 86400} days ahead", "send_at")
    return Options(
        category=None if category is None else _name(category, "category", where),
        critical=False if critical is None else _flag(critical, "critical", where),
        due=due if due is not None and due > now else None,
        group=None if group is None else _name(group, "group", where),
    )


# -- preferences --------------------------------------------------------------


class PreferenceStore(t.Protocol):
    """**Protocol:** where a store keeps users' preferences (part of every store's ``Broker``)."""

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The preferences (:meth:`Preferences.to_json`) of those of these users who set some."""
        ...

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""
        ...

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        ...


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window, in the user's own time zone, in which non-critical notices wait.

    ``start`` after ``end`` crosses midnight (22:00-07:00). Times are wall-clock times of
    ``timezone``, so the window follows daylight-saving changes.
    """

    start: time
    end: time
    timezone: str

    def until(self, now: float) -> float | None:
        """When the window that holds ``now`` ends (Unix time), or ``None`` if ``now`` is outside it.

        The end is the first moment the user's wall clock shows ``end`` after ``now`` (see
        :func:`_wall_time` for the nights the clock changes).
        """
        zone = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside, end_day = self.start <= clock < self.end, local.date()
        else:
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not inside:
            return None
        return _wall_time(end_day, self.end, zone, after=now)

    def to_dict(self) -> dict[str, str]:
        """``{"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}``."""
        return {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "timezone": self.timezone,
        }


def _wall_time(day: date, clock: time, zone: ZoneInfo, after: float) -> float:
    """The Unix time of ``clock`` on ``day`` in ``zone`` (or the next day's), later than ``after``.

    A time that a spring-forward change skips counts as if the clock had not changed (02:30
    on that night is 03:30 summer time); a time that a fall-back change repeats is its first.
    """
    for _ in range(3):
        stamp = datetime.combine(day, clock, tzinfo=zone).timestamp()
        if stamp > after:
            return stamp
        day += timedelta(days=1)
    return after  # (not reached: a window ends within a day)


def _clock(value: object, option: str) -> time:
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        _refuse(option, 'a time of day "HH:MM" (00:00 to 23:59)', value)
    return time(int(match[1]), int(match[2]))


def _channels(value: object, option: str) -> dict[str, bool]:
    if not isinstance(value, dict):
        _refuse(option, 'an object of channels, e.g. {"in_app": false}', value)
    for channel, wanted in value.items():
        if channel not in CHANNELS:
            raise InvalidOption(
                f"{option}: unknown channel {channel!r} (channels: {', '.join(CHANNELS)})", option
            )
        if not isinstance(wanted, bool):
            _refuse(f"{option}.{channel}", "true or false", wanted)
    return dict(value)


@dataclass(frozen=True, slots=True)
class Preferences:
    """One user's preferences: categories by channel, a default, quiet hours."""

    #: Per category, per channel: whether the user wants it there.
    categories: t.Mapping[str, t.Mapping[str, bool]] = field(default_factory=dict)
    #: Per channel, for categories not listed (a channel not named: wanted).
    default: t.Mapping[str, bool] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None

    @classmethod
    def checked(cls, body: object) -> Preferences:
        """Preferences from a request body, checked.

        :raises InvalidOption: naming the field that is wrong.
        """
        if not isinstance(body, dict):
            _refuse("preferences", "a JSON object", type(body).__name__)
        unknown = sorted(set(body) - {"categories", "default", "quiet_hours"})
        if unknown:
            raise InvalidOption(
                f"preferences: unknown field {unknown[0]!r} (fields: categories, default, quiet_hours)",
                unknown[0],
            )
        raw = body.get("categories", {})
        if not isinstance(raw, dict):
            _refuse("categories", 'an object of categories, e.g. {"marketing": {"in_app": false}}', raw)
        if len(raw) > MAX_CATEGORIES:
            raise InvalidOption(f"categories: at most {MAX_CATEGORIES}, got {len(raw)}", "categories")
        categories = {}
        for name, channels in raw.items():
            _name(name, "categories", "")
            categories[name] = _channels(channels, f"categories.{name}")
        default = _channels(body.get("default", {}), "default")
        quiet = body.get("quiet_hours")
        return cls(categories, default, None if quiet is None else _quiet_hours(quiet))

    @staticmethod
    def from_json(text: str | None) -> Preferences:
        """Preferences a store keeps (as :meth:`to_json` wrote them); the defaults for ``None``."""
        return _stored_preferences(text) if text else DEFAULT_PREFERENCES

    def to_dict(self) -> dict[str, t.Any]:
        """The JSON body of ``GET /users/<id>/preferences`` (and of the ``preferences`` event)."""
        return {
            "categories": {name: dict(channels) for name, channels in self.categories.items()},
            "default": dict(self.default),
            "quiet_hours": None if self.quiet_hours is None else self.quiet_hours.to_dict(),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON."""
        return dumps(self.to_dict())

    def wants(self, category: str | None, channel: str = "in_app") -> bool:
        """Whether the user wants a notice of ``category`` on ``channel``.

        A notice with no category is always wanted in-app; on another channel it follows the
        channel's ``default`` (``{"default": {"email": false}}``: no email at all).
        """
        if category is None:
            return channel == "in_app" or self.default.get(channel, True)
        listed = self.categories.get(category)
        if listed is not None and channel in listed:
            return listed[channel]
        return self.default.get(channel, True)

    @property
    def mutes(self) -> bool:
        """Whether some category is not wanted in-app (broadcasts must then be filtered)."""
        return self.default.get("in_app", True) is False or any(
            channels.get("in_app") is False for channels in self.categories.values()
        )

    def decide(
        self, options: Options, now: float, channel: str = "in_app"
    ) -> tuple[str, str | None, float | None]:
        """What happens to a notice for this user now: ``(status, reason, due)``.

        ``(DELIVERED, None, None)``; ``(SUPPRESSED, "category_muted", None)`` for a category
        the user does not want on ``channel``; ``(HELD, "quiet_hours", end)`` during quiet hours.
        A critical notice is always delivered.
        """
        if options.critical:
            return DELIVERED, None, None
        if not self.wants(options.category, channel):
            return SUPPRESSED, "category_muted", None
        if self.quiet_hours is not None:
            end = self.quiet_hours.until(now)
            if end is not None:
                return HELD, "quiet_hours", end
        return DELIVERED, None, None


def _quiet_hours(value: object) -> QuietHours:
    if not isinstance(value, dict) or set(value) != {"start", "end", "timezone"}:
        _refuse(
            "quiet_hours",
            'null or {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}',
            value,
        )
    start = _clock(value["start"], "quiet_hours.start")
    end = _clock(value["end"], "quiet_hours.end")
    if start == end:
        raise InvalidOption("quiet_hours: start and end must differ", "quiet_hours")
    zone = value["timezone"]
    try:
        if not isinstance(zone, str) or not zone or zone.startswith(("/", ".")) or ".." in zone:
            raise ValueError(zone)
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        _refuse("quiet_hours.timezone", "an IANA time zone such as Europe/Berlin", zone)
    return QuietHours(start, end, zone)


#: The preferences of a user who never set any: everything, at any time.
DEFAULT_PREFERENCES = Preferences()


@functools.lru_cache(maxsize=4096)
def _stored_preferences(text: str) -> Preferences:
    # Read at every publish to a user who has preferences: parse each text once.
    return Preferences.checked(orjson.loads(text))


# -- what a publish did ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a publish did for one recipient (``user_id=None``: a broadcast)."""

    #: :data:`DELIVERED`, :data:`SCHEDULED`, :data:`HELD` or :data:`SUPPRESSED`.
    status: str
    user_id: str | None
    #: The stored notice (delivered).
    notice: Notice | None = None
    #: The scheduler's id of a notice that waits (scheduled, held): cancel it with it.
    scheduled_id: str | None = None
    #: When it is due (Unix time): scheduled, held.
    due: float | None = None
    #: Why it was not delivered now: ``quiet_hours``, ``category_muted``.
    reason: str | None = None
    data_json: str = ""
    meta_json: str = ""

    @property
    def id(self) -> int | None:
        """The notice's id (its cursor), once it is stored."""
        return None if self.notice is None else self.notice.id

    @property
    def created_at(self) -> str | None:
        """When the notice was stored."""
        return None if self.notice is None else self.notice.created_at

    @property
    def data(self) -> dict[str, t.Any]:
        """The publisher's data."""
        if self.notice is not None:
            return self.notice.data
        value: dict[str, t.Any] = orjson.loads(self.data_json)
        return value

    def fields(self) -> dict[str, t.Any]:
        """The receipt's JSON object: the notice (delivered), or what waits, or why not."""
        if self.notice is not None:
            return {**self.notice.fields(), "status": self.status}
        fields: dict[str, t.Any] = {"status": self.status, "user_id": self.user_id}
        topic = topic_of(self.user_id)
        if topic is not None:
            fields.update(user_id=None, topic=topic)
        if self.scheduled_id is not None:
            fields["scheduled_id"] = self.scheduled_id
        if self.due is not None:
            fields["due_at"] = utc_iso(datetime.fromtimestamp(self.due, timezone.utc))
        if self.reason is not None:
            fields["reason"] = self.reason
        fields["data"] = orjson.Fragment(self.data_json)
        if self.meta_json:
            fields.update(embedded_fields(self.meta_json))
        return fields

    def to_json(self) -> str:
        """:meth:`fields` as one line of JSON."""
        return orjson.dumps(self.fields()).decode()

    @classmethod
    def from_fields(cls, body: t.Mapping[str, t.Any]) -> Receipt:
        """The receipt :meth:`fields` wrote (what the Python client reads from an answer)."""
        meta = {
            name: body[name] for name in ("category", "critical", "group", "scheduled_id") if name in body
        }
        meta_json = dumps(meta) if meta else ""
        data_json = dumps(body["data"])
        user_id = body["user_id"]
        topic = body.get("topic")
        if "id" in body:
            notice = Notice(int(body["id"]), user_id, str(body["created_at"]), data_json, meta_json, topic)
            return cls(str(body.get("status", DELIVERED)), notice.key, notice)
        if topic is not None:
            user_id = TOPIC_MARK + topic
        due = parse_time(body["due_at"]) if "due_at" in body else None
        return cls(
            str(body["status"]),
            user_id,
            None,
            body.get("scheduled_id"),
            due,
            body.get("reason"),
            data_json,
            meta_json,
        )
