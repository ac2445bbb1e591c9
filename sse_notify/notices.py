"""The notice: what a publisher sends and every subscriber receives. Pure code.

JSON goes through orjson where it gives the standard library's result, because
encoding and decoding every notice's data was a fifth of the worker's time
under batched publishing (docs/BENCHMARKS.md, target 8b); orjson does it about
20 times faster. The standard library takes over where the two differ:
integers of 20 digits or more (orjson reads them as floats), NaN and the
infinities (orjson writes them as ``null``), keys that are not strings, and
types orjson knows but ``json`` refuses (``datetime``, dataclasses,
subclasses of ``str``/``int``/``dict``/``list``).
"""

from __future__ import annotations

import json
import re
import typing as t
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

from .errors import InvalidRequest, InvalidTopic, InvalidUserId

__all__ = [
    "BROADCAST",
    "EMAIL_ADDRESS",
    "FLAGS",
    "HEADER_MARK",
    "IDEMPOTENCY_KEY",
    "IDEMPOTENCY_KEY_RULE",
    "TOPIC_MARK",
    "TOPIC_PATTERN",
    "TOPIC_RULE",
    "USER_ID_PATTERN",
    "USER_ID_RULE",
    "Notice",
    "checked_idempotency_key",
    "checked_topic",
    "checked_user_id",
    "dumps",
    "embedded_fields",
    "is_user",
    "is_valid_user_id",
    "loads",
    "parse_flag",
    "stored_text",
    "topic_of",
    "utc_iso",
    "utc_iso_ago",
    "utc_now_iso",
]

#: ``user_id`` of a notice sent to every user.
BROADCAST: None = None

#: What a user id may be: 1 to 128 of ASCII letters, digits and ``_ . @ : + -``.
#: Anything else is refused with 400 before it reaches a store or a stream.
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@:+\-]{1,128}")
#: :data:`USER_ID_PATTERN` in words, for error messages.
USER_ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . @ : + -"
#: What a topic's name may be (``match-42``, ``team:7``): the user id's characters.
TOPIC_PATTERN = USER_ID_PATTERN
#: :data:`TOPIC_PATTERN` in words, for error messages.
TOPIC_RULE = USER_ID_RULE
#: Starts the key a store keeps a topic's notices under (``#match-42``): never a user id, ``*`` or ``!``.
TOPIC_MARK = "#"
#: How a true/false query parameter or option is written (any case): the one rule of every route.
FLAGS = {"true": True, "1": True, "false": False, "0": False}


def parse_flag(value: str) -> bool | None:
    """``True`` or ``False`` for a text of :data:`FLAGS`, ``None`` for anything else."""
    return FLAGS.get(value.lower())


#: An email address: one @, no spaces, line breaks, quotes or list separators; 254 characters at most.
EMAIL_ADDRESS = re.compile(r"[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,189}")

#: What an ``Idempotency-Key`` of a publish may be.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
#: :data:`IDEMPOTENCY_KEY` in words, for error messages.
IDEMPOTENCY_KEY_RULE = "1-200 printable ASCII characters (no spaces)"


def is_valid_user_id(user_id: object) -> bool:
    """Whether ``user_id`` is a string that fits :data:`USER_ID_PATTERN`."""
    return isinstance(user_id, str) and USER_ID_PATTERN.fullmatch(user_id) is not None


def checked_user_id(user_id: object, where: str = "") -> str:
    """``user_id``, if it fits :data:`USER_ID_PATTERN`: the one check of every route and call.

    :param where: what the message starts with (``"notice 3: "`` in a batch).
    :raises ~sse_notify.errors.InvalidUserId: naming the rule, if not.
    """
    if not is_valid_user_id(user_id):
        raise InvalidUserId(f"{where}user_id must be {USER_ID_RULE}, got {user_id!r}", user_id)
    return t.cast(str, user_id)


def topic_of(recipient: str | None) -> str | None:
    """The topic a recipient key names (``#match-42``: ``match-42``), else ``None`` (a user, everyone)."""
    return recipient[1:] if recipient is not None and recipient[:1] == TOPIC_MARK else None


def is_user(recipient: str | None) -> t.TypeGuard[str]:
    """Whether a recipient key is one user (not ``None``, everyone; not ``#<topic>``)."""
    return recipient is not None and recipient[:1] != TOPIC_MARK


def checked_topic(topic: object, where: str = "") -> str:
    """``topic``, if it fits :data:`TOPIC_PATTERN`: the one check of every route and call.

    :raises ~sse_notify.errors.InvalidTopic: naming the rule, if not.
    """
    if not isinstance(topic, str) or TOPIC_PATTERN.fullmatch(topic) is None:
        raise InvalidTopic(f"{where}a topic must be {TOPIC_RULE}, got {topic!r}", topic)
    return topic


def checked_idempotency_key(key: object) -> str:
    """``key``, if it is a valid ``Idempotency-Key`` (:data:`IDEMPOTENCY_KEY`).

    :raises ~sse_notify.errors.InvalidRequest: naming the rule, if not.
    """
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key):
        shown = key[:210] if isinstance(key, str) else key
        raise InvalidRequest(f"Idempotency-Key must be {IDEMPOTENCY_KEY_RULE}, got {shown!r}")
    return key


_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# orjson keeps integers from -2**63 to 2**64 - 1 exact and makes the others floats: text with a
# number of 20 digits, or of 19 after a minus (below -2**63 for some), is left to the stdlib.
_LONG_NUMBER_BYTES = re.compile(rb"-[0-9]{19}|[0-9]{20}")
_LONG_NUMBER_TEXT = re.compile(r"-[0-9]{19}|[0-9]{20}")


def _stdlib_dumps(value: object, sort_keys: bool = False) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=sort_keys)


def dumps(value: object, *, sort_keys: bool = False) -> str:
    """Compact one-line JSON (never contains CR or LF; NaN is refused).

    :param sort_keys: sort every object's keys, so equal data built in another
        order gives the same text (for fingerprints).
    :raises TypeError: for a value JSON cannot hold.
    :raises ValueError: for NaN or an infinity, or a circular reference.
    """
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS | (orjson.OPT_SORT_KEYS if sort_keys else 0))
    except TypeError:  # a big integer, a non-string key, a subclass...: the stdlib decides
        return _stdlib_dumps(value, sort_keys)
    if b"null" in text:  # maybe a NaN or infinity, which orjson writes as null
        return _stdlib_dumps(value, sort_keys)
    return text.decode()


def _refuse_constant(name: str) -> t.NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> t.Any:
    """Parse JSON strictly: NaN and the infinities are refused, long integers kept exact.

    :raises ValueError: if ``text`` is not JSON (``json.JSONDecodeError`` or
        ``UnicodeDecodeError``).
    :raises RecursionError: if it is nested too deeply for the standard library.
    """
    pattern: re.Pattern[t.Any] = _LONG_NUMBER_BYTES if isinstance(text, bytes) else _LONG_NUMBER_TEXT
    if pattern.search(text) is None:
        return orjson.loads(text)
    return json.loads(text, parse_constant=_refuse_constant)


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


#: Starts (and ends) a stored notice's delivery header: never the first character of JSON data.
HEADER_MARK = "\x1e"


def stored_text(data_json: str, meta_json: str = "") -> str:
    """What a store keeps for a notice: its data, after its delivery header if it has one.

    A notice with delivery fields (``category``, ``group``...) is kept as
    ``\x1e<meta JSON>\x1e<data JSON>``: JSON text never holds a raw ``\x1e``, and data
    always starts with ``{``, so the one text column (stream field) every store already has
    carries both, and a notice without options is stored exactly as before.
    """
    return f"{HEADER_MARK}{meta_json}{HEADER_MARK}{data_json}" if meta_json else data_json


def embedded_fields(meta_json: str) -> dict[str, t.Any]:
    """The fields of a JSON object, each as its JSON text (for ``orjson.dumps``: long integers stay exact)."""
    return {key: orjson.Fragment(dumps(value)) for key, value in loads(meta_json).items()}


@dataclass(frozen=True, slots=True)
class Notice:
    """A stored notice.

    ``id`` is the store's cursor: it grows with every notice (whatever the user),
    so "everything after cursor N" is well defined for resume. ``data_json`` is
    the publisher's JSON object, kept as text so it is encoded once. ``meta_json``
    holds its delivery fields (``category``, ``critical``, ``group``...) as a JSON
    object, or ``""`` for none; they sit beside ``data`` in the notice's JSON.
    A notice is for one user (``user_id``), for the followers of a ``topic``, or
    (neither) for everyone.
    """

    id: int
    user_id: str | None
    created_at: str
    data_json: str
    meta_json: str = ""
    topic: str | None = None

    @classmethod
    def stored(cls, id: int, key: str | None, created_at: str, text: str) -> Notice:
        """The notice a store keeps as ``text`` (see :func:`stored_text`) under ``key``.

        ``key``: the user id, ``#<topic>`` for a topic's notice, or ``None`` for a broadcast.
        """
        topic = topic_of(key)
        if topic is not None:
            key = None
        if type(text) is not str or text[:1] != HEADER_MARK:  # (a store refuses what is not text)
            return cls(id, key, created_at, text, "", topic)
        end = text.index(HEADER_MARK, 1)
        return cls(id, key, created_at, text[end + 1 :], text[1:end], topic)

    @property
    def key(self) -> str | None:
        """What a store keeps it under: the user id, ``#<topic>``, or ``None`` (a broadcast)."""
        return TOPIC_MARK + self.topic if self.topic is not None else self.user_id

    @property
    def text(self) -> str:
        """What a store keeps for this notice (:func:`stored_text`)."""
        return stored_text(self.data_json, self.meta_json)

    @property
    def meta(self) -> dict[str, t.Any]:
        """Its delivery fields (empty for none)."""
        return loads(self.meta_json) if self.meta_json else {}  # (long integers kept exact)

    @property
    def is_broadcast(self) -> bool:
        """Whether this notice goes to every user."""
        return self.user_id is None and self.topic is None

    @property
    def data(self) -> dict[str, t.Any]:
        """The publisher's JSON object."""
        value: dict[str, t.Any] = loads(self.data_json)
        return value

    def fields(self) -> dict[str, t.Any]:
        """The notice's JSON object for ``orjson.dumps``, its stored data embedded as it is."""
        fields = {
            "id": self.id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "data": orjson.Fragment(self.data_json),
        }
        if self.topic is not None:
            fields["topic"] = self.topic
        if self.meta_json:
            fields.update(embedded_fields(self.meta_json))
        return fields

    def to_json(self) -> str:
        """The notice as one line of JSON: the ``data:`` of its SSE event and the 201 body."""
        return orjson.dumps(self.fields()).decode()

    def to_dict(self) -> dict[str, t.Any]:
        """The notice as a dict (same shape as :meth:`to_json`)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "data": self.data,
            **({"topic": self.topic} if self.topic is not None else {}),
            **self.meta,
        }
