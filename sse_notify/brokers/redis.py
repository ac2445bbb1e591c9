"""``redis://host:port/db`` (or ``rediss://``): notices in Redis, shared by every host.

Layout (every key under one prefix, ``sse_notify:`` by default):

=====================  ========================================================
``{p}seq``             the cursor: one counter for every notice
``{p}log:{user}``      a stream per user (``{p}log:*`` for broadcasts), entry id
                       ``<cursor>-0``, capped by count and age, expiring with age
``{p}floor``           hash: per user, the newest cursor retention dropped
``{p}last``            hash: per user, the newest cursor ever stored (a stream
                       that expired whole lost everything up to it)
``{p}log:!``           the control records (never replayed)
``{p}events@{db}:{k}`` the pub/sub channel of audience ``k``: a user, ``*``
                       (broadcasts) or ``!`` (control records for every hub)
``{p}marks:{user}``    hash: a user's inbox marks, field ``<cursor>``, value
                       ``r``/``u`` (read, unread) and ``a`` (archived)
``{p}through``         hash: per user, the read-all cursor
``{p}prefs``           hash: per user, their preferences (JSON)
``{p}groups:{user}``   hash: a user's group keys, each the cursor of the group's
                       newest entry
``{p}rec:{kind}:{user}`` hash: a user's records of a kind (``contacts``,
                       ``push``), by name
``{p}idem:{key}``      hash: an idempotency key's request fingerprint, first
                       cursor and time, expiring after the key's lifetime
``{p}workers``         sorted set: live workers (presence), scored by expiry
``{p}presence:{w}``    hash: worker ``w``'s open streams per user, expiring
                       with the worker
``{p}sched``           sorted set: the scheduler's entries (``<kind>\0<key>``),
                       scored by when they fall due or their claim's lease ends
``{p}sched:{kind}``    hash: per key, ``<token>\t<due>\t<payload>``
``{p}sched:tokens``    the counter that makes each schedule and claim's token
=====================  ========================================================

**Atomic publish.** One Lua script stores a batch (INCR, XADD, trimming, floors)
and PUBLISHes it: no subscriber can see a notice that replay would not return,
or the reverse.

**Targeted delivery.** Each notice is announced on its audience's channel only
(a run of one audience's items in a batch as one message, the runs in store
order), so a worker receives the notices of the users it holds streams for,
every broadcast, and control records (a kick or an inbox change on its user's
channel). With one channel for everything, every worker received every notice:
Redis's output and each worker's CPU per notice grew with the number of
workers (``bench scaling``, docs/BENCHMARKS.md). A worker subscribes to a user
at the user's first stream (:meth:`RedisBroker.follow`), and only returns once
Redis confirmed it, so a notice published after that is announced to it; one
published before is in the replay the new stream reads from the head taken
before subscribing. It unsubscribes :attr:`RedisBroker.linger` seconds after
the user's last stream closed (a reconnect within that costs nothing).

**One subscription per process.** The feed is one pub/sub connection per
worker, whatever the number of streams and users, plus a small blocking pool
for commands. Redis sends a connection's messages in the order the scripts ran,
so the feed's cursor (the newest item it handed over) stays exact. When the
subscription breaks (Redis restarted, a network blip, or redis-py reconnected by
itself) the feed subscribes afresh to everything it follows, waits for Redis to
confirm it, and catches up each followed user's log, the broadcasts' and the
control records' after that cursor; if retention dropped some of them, it tells
the hub to close its streams so that every client resumes from its own
``Last-Event-ID``. A check of ``{p}seq`` once per poll interval catches a Redis
that lost data (restarted without persistence).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import typing as t
from urllib.parse import urlsplit

from ..concurrency import Batcher, Task, spawn
from ..control import Control, Kind
from ..delivery import group_key
from ..errors import BrokerError, BrokerUnavailable, ConfigError
from ..inbox import InboxState
from ..notices import Notice, utc_iso_ago, utc_now_iso
from ..schedule import Due, checked_kind
from . import base
from .base import BROADCAST_KEY, CONTROL_KEY, Published, Replay, StoreBase

try:
    import redis
except ImportError:  # pragma: no cover - depends on the install
    redis = None  # type: ignore[assignment]

__all__ = ["RedisBroker", "RedisStore"]

log = logging.getLogger("sse_notify.brokers.redis")

#: What the feed hands the hub when it cannot fill a gap: every stream resumes from its cursor.
RESYNC = Control(Kind.RESYNC)
#: The longest the feed waits for a message before it looks whether it was closed.
_LISTEN = 0.2
#: The longest a follower (and a resubscribing feed) waits for Redis to confirm subscriptions.
_CONFIRM = 5.0
#: Channels per SUBSCRIBE (and keys per catch-up script).
_CHUNK = 500
#: Control records announced on their user's channel only (the others reach every process).
_USER_CONTROLS = frozenset({Kind.KICK, Kind.STATE})

_TRIM = """
local function trim(p, key, keep, cutoff)
  local stream = p .. 'log:' .. key
  local dropped = nil
  local n = redis.call('XLEN', stream)
  local marks = p .. 'marks:' .. key
  local function drop(id)
    redis.call('XDEL', stream, id)
    if key ~= '*' then redis.call('HDEL', marks, string.match(id, '^(%d+)')) end
    dropped = id
  end
  if n > keep then
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', n - keep)
    for _, e in ipairs(old) do drop(e[1]) end
  end
  while true do
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #first == 0 or first[1][2][2] >= cutoff then break end
    drop(first[1][1])
  end
  if dropped then
    local seq = tonumber(string.match(dropped, '^(%d+)'))
    local cur = tonumber(redis.call('HGET', p .. 'floor', key) or '0')
    if seq > cur then redis.call('HSET', p .. 'floor', key, seq) end
  end
  return dropped
end
"""

_PUBLISH = (
    _TRIM
    + """
local p, keep, ttl, cutoff, created, events = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local once = ARGV[7]
if once ~= '' then
  local earlier = redis.call('HMGET', p .. 'idem:' .. once, 'f', 's', 'c')
  if earlier[1] then return {'replayed', earlier[1], earlier[2], earlier[3]} end
end
-- Grouped notices (ARGV[10] of them): the item's index, the group key, what the publisher
-- read (the group's entry, its mark, the user's read-all cursor) and the entry it replaces.
-- Anything changed since it was read: store nothing, the publisher reads again.
local ngroups = tonumber(ARGV[10])
local first = 11 + ngroups * 6
local grouped = {}
for g = 0, ngroups - 1 do
  local b = 11 + g * 6
  local index, gkey, prev = tonumber(ARGV[b]), ARGV[b + 1], ARGV[b + 2]
  local user = ARGV[first + (index - 1) * 2]
  if (redis.call('HGET', p .. 'groups:' .. user, gkey) or '') ~= prev then return {'retry'} end
  if prev ~= '' then
    if (redis.call('HGET', p .. 'marks:' .. user, prev) or '') ~= ARGV[b + 3] then return {'retry'} end
    if (redis.call('HGET', p .. 'through', user) or '') ~= ARGV[b + 4] then return {'retry'} end
  end
  grouped[index] = {gkey, ARGV[b + 5]}
end
-- Each item is announced on the channel of its audience (its user, '*' or '!'); a control
-- record about one user ('!' .. user) is kept under '!' and announced on that user's channel.
-- A run of items for one audience goes out as one message, the runs in store order.
local seqs, lines, touched, route = {}, {}, {}, nil
for i = first, #ARGV, 2 do
  local key, data = ARGV[i], ARGV[i + 1]
  local to = key
  if string.byte(key, 1) == 33 and #key > 1 then key, to = '!', string.sub(key, 2) end
  if to ~= route and #lines > 0 then
    redis.call('PUBLISH', events .. route, table.concat(lines, '\\n'))
    lines = {}
  end
  route = to
  local seq = redis.call('INCR', p .. 'seq')
  local id = seq .. '-0'
  redis.call('XADD', p .. 'log:' .. key, id, 'c', created, 'd', data)
  redis.call('HSET', p .. 'last', key, seq)
  local group = grouped[(i - first) / 2 + 1]
  if group then
    redis.call('HSET', p .. 'groups:' .. key, group[1], seq)
    redis.call('PEXPIRE', p .. 'groups:' .. key, ttl)
    if group[2] ~= '' then
      redis.call('XDEL', p .. 'log:' .. key, group[2] .. '-0')
      redis.call('HDEL', p .. 'marks:' .. key, group[2])
    end
  end
  touched[key] = true
  seqs[#seqs + 1] = seq
  lines[#lines + 1] = seq .. '\\t' .. key .. '\\t' .. created .. '\\t' .. data
end
for key, _ in pairs(touched) do
  trim(p, key, keep, cutoff)
  redis.call('PEXPIRE', p .. 'log:' .. key, ttl)
end
if once ~= '' then
  redis.call('HSET', p .. 'idem:' .. once, 'f', ARGV[8], 's', seqs[1], 'c', created)
  redis.call('PEXPIRE', p .. 'idem:' .. once, ARGV[9])
end
redis.call('PUBLISH', events .. route, table.concat(lines, '\\n'))
return seqs
"""
)

#: The newest cursor of ``key``'s that no read returns any more (retention, or the log expired whole).
_FLOOR = """
local function floor_of(p, key)
  local f = tonumber(redis.call('HGET', p .. 'floor', key) or '0')
  if redis.call('EXISTS', p .. 'log:' .. key) == 0 then
    local last = tonumber(redis.call('HGET', p .. 'last', key) or '0')
    if last > f then f = last end
  end
  return f
end
"""

_REPLAY = (
    _FLOOR
    + """
-- ARGV: prefix, cursor, then the keys (the user, '*', each topic's '#<topic>').
local p, cursor = ARGV[1], ARGV[2]
local floor = 0
for i = 3, #ARGV do floor = math.max(floor, floor_of(p, ARGV[i])) end
local head = tonumber(redis.call('GET', p .. 'seq') or '0')
local found = {}
for i = 3, #ARGV do
  found[i - 2] = {}
  if cursor ~= '' and tonumber(cursor) <= head then
    found[i - 2] = redis.call('XRANGE', p .. 'log:' .. ARGV[i], '(' .. cursor .. '-0', '+')
  end
end
return {floor, head, found}
"""
)

#: The feed's catch-up after it (re)subscribed: ARGV = prefix, then (key, cursor) pairs. For
#: each key: whether its notices after the cursor are no longer all kept, and its entries after it.
_CATCH_UP = (
    _FLOOR
    + """
local p = ARGV[1]
local out = {}
for i = 2, #ARGV, 2 do
  local key, from = ARGV[i], tonumber(ARGV[i + 1])
  local lost = floor_of(p, key) > from and 1 or 0
  out[#out + 1] = {lost, redis.call('XRANGE', p .. 'log:' .. key, '(' .. from .. '-0', '+')}
end
return {tonumber(redis.call('GET', p .. 'seq') or '0'), out}
"""
)

_SWEEP = (
    _TRIM
    + """
local p, cutoff = ARGV[1], ARGV[2]
local dropped = 0
for i = 3, #ARGV do
  local before = redis.call('XLEN', p .. 'log:' .. ARGV[i])
  trim(p, ARGV[i], 1e18, cutoff)
  dropped = dropped + before - redis.call('XLEN', p .. 'log:' .. ARGV[i])
end
return dropped
"""
)


# A mark is "<r|u><a>s<until>": read or unread, archived, snoozed until (each optional).
_MARK = """
local marks, ttl, read, archived = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local old = redis.call('HGET', marks, ARGV[i]) or ''
  local flags, z = string.match(old, '^[^s]*'), string.match(old, 's.*$') or ''
  local r = string.match(flags, '[ru]') or ''
  local a = string.find(flags, 'a', 1, true) and 'a' or ''
  if read ~= '' then r = read end
  if archived == '1' then a = 'a' elseif archived == '0' then a = '' end
  local value = r .. a .. z
  if value == '' then redis.call('HDEL', marks, ARGV[i]) else redis.call('HSET', marks, ARGV[i], value) end
end
redis.call('PEXPIRE', marks, ttl)
"""

_SNOOZE = """
local marks, ttl, seq, till = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', marks, seq) or ''
redis.call('HSET', marks, seq, string.match(old, '^[^s]*') .. 's' .. till)
redis.call('PEXPIRE', marks, ttl)
"""

_WAKE = """
local marks, seq, till = KEYS[1], ARGV[1], ARGV[2]
local old = redis.call('HGET', marks, seq) or ''
if string.match(old, 's.*$') ~= 's' .. till then return 0 end
local a = string.find(string.match(old, '^[^s]*'), 'a', 1, true) and 'a' or ''
redis.call('HSET', marks, seq, 'u' .. a)
return 1
"""

_DELETE = """
local log, marks = KEYS[1], KEYS[2]
local out = {}
for i = 1, #ARGV do
  if redis.call('XDEL', log, ARGV[i] .. '-0') == 1 then
    redis.call('HDEL', marks, ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

_READ_THROUGH = """
local marks, through, user, seq = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', through, user) or '0')
if seq > cur then redis.call('HSET', through, user, seq) end
local all = redis.call('HGETALL', marks)
for i = 1, #all, 2 do
  if tonumber(all[i]) <= seq then
    local flags, z = string.match(all[i + 1], '^[^s]*'), string.match(all[i + 1], 's.*$') or ''
    local a = string.find(flags, 'a', 1, true) and 'a' or ''
    if a .. z == '' then redis.call('HDEL', marks, all[i]) else redis.call('HSET', marks, all[i], a .. z) end
  end
end
"""

#: Presence: KEYS = the workers' sorted set (score: expiry in ms of Redis time),
#: this worker's hash; ARGV = worker, ttl ms, then user, streams pairs.
_PRESENCE_UPDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 3, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
"""

#: Presence: ARGV = prefix, then users; returns their streams summed over the live workers.
_PRESENCE_COUNTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local workers = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'workers', '(' .. now, '+inf')
local counts = {}
for i = 2, #ARGV do counts[i - 1] = 0 end
for _, worker in ipairs(workers) do
  local found = redis.call('HMGET', ARGV[1] .. 'presence:' .. worker, unpack(ARGV, 2))
  for i, n in ipairs(found) do
    if n then counts[i] = counts[i] + tonumber(n) end
  end
end
return counts
"""


# The scheduler: {p}sched scores "<kind>\0<key>" by when it is due (or its claim's lease
# ends); {p}sched:{kind} holds each key's "<token>\t<scheduled due>\t<payload>".
_SCHEDULE = """
local p, kind = ARGV[1], ARGV[2]
for i = 3, #ARGV, 3 do
  local key, due, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local token = redis.call('INCR', p .. 'sched:tokens')
  redis.call('ZADD', p .. 'sched', due, kind .. '\0' .. key)
  redis.call('HSET', p .. 'sched:' .. kind, key, token .. '\t' .. due .. '\t' .. payload)
end
"""

_SET_RECORD = """
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
if ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return existed
"""

_UNSCHEDULE = """
local p, kind, key = ARGV[1], ARGV[2], ARGV[3]
redis.call('ZREM', p .. 'sched', kind .. '\0' .. key)
return redis.call('HDEL', p .. 'sched:' .. kind, key)
"""

_CLAIM_DUE = """
local p, now, limit, lease_end = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local members = redis.call('ZRANGEBYSCORE', p .. 'sched', '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, member in ipairs(members) do
  local cut = string.find(member, '\0', 1, true)
  local kind, key = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
  local value = redis.call('HGET', p .. 'sched:' .. kind, key)
  if value then
    local t1 = string.find(value, '\t', 1, true)
    local t2 = string.find(value, '\t', t1 + 1, true)
    local due, payload = string.sub(value, t1 + 1, t2 - 1), string.sub(value, t2 + 1)
    local token = redis.call('INCR', p .. 'sched:tokens')
    redis.call('HSET', p .. 'sched:' .. kind, key, token .. '\t' .. due .. '\t' .. payload)
    redis.call('ZADD', p .. 'sched', lease_end, member)
    out[#out + 1] = kind
    out[#out + 1] = key
    out[#out + 1] = due
    out[#out + 1] = payload
    out[#out + 1] = token
  else
    redis.call('ZREM', p .. 'sched', member)
  end
end
return out
"""

_FINISH = """
local p = ARGV[1]
for i = 2, #ARGV, 3 do
  local kind, key, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local value = redis.call('HGET', p .. 'sched:' .. kind, key)
  if value and string.sub(value, 1, #token + 1) == token .. '\t' then
    redis.call('HDEL', p .. 'sched:' .. kind, key)
    redis.call('ZREM', p .. 'sched', kind .. '\0' .. key)
  end
end
"""


#: How often a publish of grouped notices reads its groups again when they changed meanwhile.
_GROUP_TRIES = 100


def _flags(mark: str) -> tuple[bool | None, bool, float | None]:
    """A notice's mark in ``{p}marks:{user}``: read (``None``: no mark), archived, snoozed until."""
    flags, _, until = mark.partition("s")
    read = ("r" in flags) if ("r" in flags or "u" in flags) else None
    return read, "a" in flags, float(until) if until else None


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_fields(entry: t.Any) -> tuple[int, dict[bytes, t.Any]]:
    entry_id, fields = entry
    # redis-py parses XRANGE replies into a dict; a Lua script's reply is a flat list.
    values = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    return _seq(entry_id), values


def _entry_notice(entry: t.Any, key: str) -> Notice:
    """A notice from an entry of ``key``'s stream."""
    seq, values = _entry_fields(entry)
    return Notice.stored(seq, None if key == BROADCAST_KEY else key, _text(values[b"c"]), _text(values[b"d"]))


class _Following:
    """A user the feed follows: the head read before subscribing, and whether Redis confirmed it."""

    __slots__ = ("ready", "since")

    def __init__(self, since: int) -> None:
        self.since = since
        self.ready = threading.Event()


if redis is not None:

    class _PubSub(redis.client.PubSub):
        """redis-py's pub/sub, telling when it reconnected by itself.

        It then subscribes again to its channels, but what was published meanwhile is
        lost: the feed must subscribe afresh and catch up.
        """

        reconnected = False

        def on_connect(self, connection: t.Any) -> None:
            self.reconnected = True
            super().on_connect(connection)


#: KEYS: the hash of the read-all cursor, the marks. ARGV: the cursor's field. The cursor and the marks.
_STATE = "return {redis.call('HGET', KEYS[1], ARGV[1]) or '', redis.call('HGETALL', KEYS[2])}"

#: The scripts of a user's inbox and records: the same on one Redis and on a cluster (each
#: touches one user's keys, named by the store's layout).
USER_SCRIPTS = {
    "state": _STATE,
    "mark": _MARK,
    "read_through": _READ_THROUGH,
    "delete": _DELETE,
    "snooze": _SNOOZE,
    "wake": _WAKE,
    "set_record": _SET_RECORD,
}


class RedisStore(StoreBase[t.Any]):
    """What the Redis stores share: a user's inbox marks, read-all cursor, groups and records, each
    behind the store's key layout (:meth:`_log`, :meth:`_marks`, :meth:`_groups`, :meth:`_through`,
    :meth:`_records`)."""

    durable = True
    serialized = False  # redis-py's clients are thread-safe, with pools of connections
    retention_age: float
    _scripts: dict[str, t.Any]

    # -- the layout (each store's own) ----------------------------------------

    def _log(self, user_id: str) -> str:
        """The user's stream of notices."""
        raise NotImplementedError

    def _marks(self, user_id: str) -> str:
        """The hash of the user's inbox marks."""
        raise NotImplementedError

    def _groups(self, user_id: str) -> str:
        """The hash of the user's group keys."""
        raise NotImplementedError

    def _through(self, user_id: str) -> tuple[str, str]:
        """The hash and field of the user's read-all cursor."""
        raise NotImplementedError

    def _records(self, kind: str, user_id: str) -> str:
        """The hash of the user's records of ``kind``."""
        raise NotImplementedError

    # -- what they share ------------------------------------------------------

    def _ttl_ms(self) -> int:
        # A user's streams (and marks) expire whole well after the retention age.
        return int((self.retention_age * 2 + 60) * 1000)

    def _fold_read(self, client: t.Any, user_id: str, key: str, text: str, created_at: str) -> list[t.Any]:
        """Read a group's entry and fold ``text`` into it: what the publish script checks, then the text."""
        prev = _text(client.hget(self._groups(user_id), key) or b"")
        mark = through = ""
        previous = state = None
        if prev:
            mark = _text(client.hget(self._marks(user_id), prev) or b"")
            through = _text(client.hget(*self._through(user_id)) or b"")
            found = client.xrange(self._log(user_id), min=f"{prev}-0", max=f"{prev}-0")
            if found:
                previous = _entry_notice(found[0], user_id)
                read, archived, _ = _flags(mark)
                state = InboxState(
                    int(through or 0),
                    {} if read is None else {previous.id: read},
                    frozenset([previous.id] if archived else []),
                )
        folded, replaced = self._folded(text, created_at, previous, state)
        return [prev, mark, through, "" if replaced is None else str(replaced), folded]

    def inbox_state(self, user_id: str) -> InboxState:
        """The user's marks (one script)."""
        hash_, field = self._through(user_id)

        def work(client: t.Any) -> InboxState:
            through, flat = self._scripts["state"](keys=[hash_, self._marks(user_id)], args=[field])
            read: dict[int, bool] = {}
            archived = set()
            snoozed: dict[int, float] = {}
            for name, value in zip(flat[::2], flat[1::2], strict=True):
                seq = int(name)
                is_read, is_archived, until = _flags(_text(value))
                if is_read is not None:
                    read[seq] = is_read
                if is_archived:
                    archived.add(seq)
                if until is not None:
                    snoozed[seq] = until
            return InboxState(int(through or 0), read, frozenset(archived), snoozed)

        state: InboxState = self._run(work)
        return state

    def mark(
        self, user_id: str, ids: t.Sequence[int], *, read: bool | None = None, archived: bool | None = None
    ) -> None:
        """Set read and/or archived on these notices of the user (one script)."""
        args = [
            self._ttl_ms(),
            "" if read is None else ("r" if read else "u"),
            "" if archived is None else str(int(archived)),
            *ids,
        ]
        self._run(lambda client: self._scripts["mark"](keys=[self._marks(user_id)], args=args))

    def mark_read_through(self, user_id: str, through: int) -> None:
        """Everything up to ``through`` is read (one script)."""
        hash_, field = self._through(user_id)
        keys = [self._marks(user_id), hash_]
        self._run(lambda client: self._scripts["read_through"](keys=keys, args=[field, through]))

    def delete_notices(self, user_id: str, ids: t.Sequence[int]) -> list[int]:
        """Remove these notices of the user's own (not broadcasts), with their marks (one script)."""
        if not ids:
            return []
        keys = [self._log(user_id), self._marks(user_id)]
        removed = self._run(lambda client: self._scripts["delete"](keys=keys, args=[int(i) for i in ids]))
        return sorted(int(seq) for seq in removed)

    def snooze(self, user_id: str, seq: int, until: float) -> None:
        """Snooze the notice until ``until`` (one script)."""
        keys = [self._marks(user_id)]
        args = [self._ttl_ms(), seq, repr(float(until))]
        self._run(lambda client: self._scripts["snooze"](keys=keys, args=args))

    def wake(self, user_id: str, seq: int, until: float) -> bool:
        """End the snooze if it is still this one, and mark the notice unread (one script)."""
        keys = [self._marks(user_id)]
        return bool(
            self._run(lambda client: self._scripts["wake"](keys=keys, args=[seq, repr(float(until))]))
        )

    def user_records(self, kind: str, user_id: str) -> dict[str, str]:
        """The user's records of ``kind``, by name (one HGETALL)."""
        found = self._run(lambda client: client.hgetall(self._records(kind, user_id)))
        return {_text(name): _text(text) for name, text in found.items()}

    def set_user_record(self, kind: str, user_id: str, name: str, text: str | None) -> bool:
        """Keep (or, with ``None``, forget) one record; whether it existed before (one script)."""
        key = self._records(kind, user_id)
        args = [name] if text is None else [name, text]
        return bool(self._run(lambda client: self._scripts["set_record"](keys=[key], args=args)))


class RedisBroker(RedisStore):
    """Notices in Redis: any worker on any host can publish, replay, and listen."""

    unavailable_errors = (redis.ConnectionError, redis.TimeoutError) if redis is not None else ()
    failure_errors = (redis.RedisError,) if redis is not None else ()

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse_notify:",
        retention_count: int = 1000,
        retention_age: float = 7 * 86400,
        poll_interval: float = 1.0,
        pool_size: int = 8,
        linger: float = 10.0,
    ) -> None:
        if redis is None:
            raise ConfigError('the Redis store needs redis-py: pip install "sse-notify[redis]"')
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.linger = linger
        self._scripts: dict[str, t.Any] = {}
        #: The pub/sub channels' common start (``<prefix>events@<db>:``); each audience's
        #: channel adds its key. Pub/sub ignores the database number: naming it keeps two
        #: deployments on one server with different /db (and the same prefix) apart.
        self._events = ""  # set with the connection (it knows the database)
        self._feed_task: Task | None = None
        self._pubsub: t.Any = None
        #: The users this process's feed follows (see :meth:`follow`), by key.
        self._followed: dict[str, _Following] = {}
        #: Followed users that have no stream here any more, oldest first, with when they left.
        self._leaving: dict[str, float] = {}
        self._follow_lock = threading.Lock()
        self._follows: Batcher[tuple[str, ...], base.Followed] = Batcher(self._follow_round)

    def _forked(self) -> None:
        super()._forked()
        # The parent's pub/sub connection is the parent's: not closed here, not read.
        self._feed_task, self._pubsub = None, None
        self._followed, self._leaving = {}, {}
        self._follow_lock = threading.Lock()

    def describe(self) -> str:
        """``Redis at host:port``."""
        parts = urlsplit(self.url)
        return f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"

    # -- the layout -------------------------------------------------------

    def _log(self, user_id: str) -> str:
        return f"{self.prefix}log:{user_id}"

    def _marks(self, user_id: str) -> str:
        return f"{self.prefix}marks:{user_id}"

    def _groups(self, user_id: str) -> str:
        return f"{self.prefix}groups:{user_id}"

    def _through(self, user_id: str) -> tuple[str, str]:
        return f"{self.prefix}through", user_id

    def _records(self, kind: str, user_id: str) -> str:
        return f"{self.prefix}rec:{kind}:{user_id}"

    # -- connection -------------------------------------------------------

    def _connect(self) -> t.Any:
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.pool_size,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        client = redis.Redis(connection_pool=pool)
        self._events = f"{self.prefix}events@{pool.connection_kwargs.get('db', 0)}:"
        self._scripts = {
            "publish": client.register_script(_PUBLISH),
            "replay": client.register_script(_REPLAY),
            "catch_up": client.register_script(_CATCH_UP),
            "sweep": client.register_script(_SWEEP),
            "presence_update": client.register_script(_PRESENCE_UPDATE),
            "presence_counts": client.register_script(_PRESENCE_COUNTS),
            "schedule": client.register_script(_SCHEDULE),
            "unschedule": client.register_script(_UNSCHEDULE),
            "claim_due": client.register_script(_CLAIM_DUE),
            "finish": client.register_script(_FINISH),
            **{name: client.register_script(text) for name, text in USER_SCRIPTS.items()},
        }
        return client

    def _disconnect(self, client: t.Any) -> None:
        client.connection_pool.disconnect()

    def _ping(self, client: t.Any) -> None:
        client.ping()

    # -- writing ----------------------------------------------------------

    def _publish(
        self, items: t.Sequence[tuple[str | None, str]], once: tuple[str, str, float] | None
    ) -> Published:
        if not items:
            return Published([], False)
        self._check_items(items)
        created_at = utc_now_iso()
        args: list[t.Any] = [
            self.prefix,
            self.retention_count,
            # Streams expire whole well after the retention age: a fallback
            # for users who went quiet. Age trimming itself is the sweep's job
            # (trim_expired), as in the other stores, so publish passes no cutoff.
            int((self.retention_age * 2 + 60) * 1000),
            "",
            created_at,
        ]
        args += ["", "", 0] if once is None else [once[0], once[1], max(1, int(once[2] * 1000))]
        grouped = [
            (index, user_id, key)
            for index, (user_id, data) in enumerate(items, 1)
            if user_id is not None and (key := group_key(data)) is not None
        ]

        def work(client: t.Any) -> tuple[t.Any, list[str]]:
            for _ in range(_GROUP_TRIES):
                texts = [data for _, data in items]
                records: list[t.Any] = []
                for index, user, key in grouped:
                    record = self._fold_read(client, user, key, texts[index - 1], created_at)
                    texts[index - 1] = record.pop()
                    records += [index, key, *record]
                call = [*args[:5], self._events, *args[5:], len(grouped), *records]
                for (recipient, _), text in zip(items, texts, strict=True):
                    call += [BROADCAST_KEY if recipient is None else recipient, text]
                reply = self._scripts["publish"](args=call)
                if not (reply and _text(reply[0]) == "retry"):
                    return reply, texts
            raise BrokerError(f"{self.describe()}: grouped notices kept changing under {_GROUP_TRIES} tries")

        seqs, texts = self._run(work)
        if once is not None and seqs and _text(seqs[0]) == "replayed":
            return base.replay_publish(
                once[0], once[1], (_text(seqs[1]), int(seqs[2]), _text(seqs[3])), items
            )
        notices = [
            Notice.stored(int(seq), user_id, created_at, text)
            for seq, (user_id, _), text in zip(seqs, items, texts, strict=True)
        ]
        return Published(notices, False)

    def trim_expired(self) -> int:
        """Drop notices older than the retention age from every stream (a SCAN over the logs)."""
        pattern = f"{self.prefix}log:*"
        start = len(self.prefix) + len("log:")

        def work(client: t.Any) -> int:
            dropped = 0
            cutoff = utc_iso_ago(self.retention_age)
            batch: list[str] = []
            for key in client.scan_iter(match=pattern, count=500, _type="stream"):
                batch.append(_text(key)[start:])
                if len(batch) == 200:
                    dropped += int(self._scripts["sweep"](args=[self.prefix, cutoff, *batch]))
                    batch = []
            if batch:
                dropped += int(self._scripts["sweep"](args=[self.prefix, cutoff, *batch]))
            return dropped

        dropped: int = self._run(work)
        return dropped

    # -- reading ----------------------------------------------------------

    def head(self) -> int:
        """The newest cursor issued."""
        value = self._run(lambda client: client.get(f"{self.prefix}seq"))
        return int(value) if value else 0

    def replay(self, user_id: str, last_event_id: str, topics: t.Sequence[str] = ()) -> Replay:
        """The user's notices, the broadcasts and the topics' after the client's cursor (one atomic read)."""
        cursor = base.parse_cursor(last_event_id)
        keys = [user_id, BROADCAST_KEY, *base.topic_keys(topics)]
        args = [self.prefix, "" if cursor is None else str(cursor), *keys]
        floor, head, found = self._run(lambda client: self._scripts["replay"](args=args))
        start, reset = base.plan_replay(last_event_id, int(floor), int(head))
        notices = [_entry_notice(e, key) for key, entries in zip(keys, found, strict=True) for e in entries]
        notices = sorted((n for n in notices if n.id > start), key=lambda n: n.id)
        return Replay(notices, start, reset)

    # -- inboxes ----------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Cursors of the user's notices and the broadcasts, newest first."""

        def work(client: t.Any) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for key in (user_id, BROADCAST_KEY):
                pipe.xrevrange(f"{self.prefix}log:{key}", max="+", min="-")
            mine, everyone = pipe.execute()
            return sorted((_seq(e[0]) for e in (*mine, *everyone)), reverse=True)

        ids: list[int] = self._run(work)
        return ids

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these cursors, in that order."""
        if not ids:
            return []

        def work(client: t.Any) -> list[Notice]:
            pipe = client.pipeline(transaction=False)
            for seq in ids:
                for key in (user_id, BROADCAST_KEY):
                    pipe.xrange(f"{self.prefix}log:{key}", min=f"{seq}-0", max=f"{seq}-0")
            replies = pipe.execute()
            found = {}
            for index, entries in enumerate(replies):
                key = user_id if index % 2 == 0 else BROADCAST_KEY
                for entry in entries:
                    notice = _entry_notice(entry, key)
                    found[notice.id] = notice
            return [found[seq] for seq in ids if seq in found]

        notices: list[Notice] = self._run(work)
        return notices

    # -- preferences --------------------------------------------------------

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The stored preferences of those of these users who set some (one HMGET)."""
        if not user_ids:
            return {}
        users = list(dict.fromkeys(user_ids))
        found = self._run(lambda client: client.hmget(f"{self.prefix}prefs", users))
        return {user: _text(text) for user, text in zip(users, found, strict=True) if text is not None}

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        return bool(self._run(lambda client: client.exists(f"{self.prefix}prefs")))

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""
        self._run(lambda client: client.hset(f"{self.prefix}prefs", user_id, text))

    # -- presence -----------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users and renew its lifetime (one script)."""
        keys = [f"{self.prefix}workers", f"{self.prefix}presence:{worker}"]
        args: list[t.Any] = [worker, max(1, int(ttl * 1000))]
        for user_id, streams in counts.items():
            args += [user_id, streams]
        self._run(lambda client: self._scripts["presence_update"](keys=keys, args=args))

    def presence_leave(self, worker: str) -> None:
        """Forget the worker and its counts."""

        def work(client: t.Any) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.zrem(f"{self.prefix}workers", worker)
            pipe.delete(f"{self.prefix}presence:{worker}")
            pipe.execute()

        self._run(work)

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the live workers (one script)."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        counts = self._run(lambda client: self._scripts["presence_counts"](args=[self.prefix, *users]))
        return {user_id: int(n) for user_id, n in zip(users, counts, strict=True) if int(n) > 0}

    # -- the scheduler (one script each: atomic across workers and hosts) ---

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each entry until its due time, replacing any of this kind and key (one script)."""
        checked_kind(kind)
        args: list[t.Any] = [self.prefix, kind]
        for key, due, payload in entries:
            args += [key, repr(float(due)), payload]
        if entries:
            self._run(lambda client: self._scripts["schedule"](args=args))

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry; whether there was one."""
        checked_kind(kind)
        return bool(self._run(lambda client: self._scripts["unschedule"](args=[self.prefix, kind, key])))

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key, if it waits (claimed or not)."""
        checked_kind(kind)
        value = self._run(lambda client: client.hget(f"{self.prefix}sched:{kind}", key))
        return None if value is None else _text(value).split("\t", 2)[2]

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` due entries for ``lease`` seconds, the earliest first."""
        args = [self.prefix, repr(float(now)), int(limit), repr(float(now + lease))]
        found = self._run(lambda client: self._scripts["claim_due"](args=args))
        return [
            Due(
                _text(found[i]),
                _text(found[i + 1]),
                float(found[i + 2]),
                _text(found[i + 3]),
                int(found[i + 4]),
            )
            for i in range(0, len(found), 5)
        ]

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget the entries these claims took, where they are still theirs."""
        if not claimed:
            return
        args: list[t.Any] = [self.prefix]
        for due in claimed:
            args += [due.kind, due.key, str(due.token)]
        self._run(lambda client: self._scripts["finish"](args=args))

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait."""
        checked_kind(kind)
        return int(self._run(lambda client: client.hlen(f"{self.prefix}sched:{kind}")))

    # -- the feed ---------------------------------------------------------

    def publish_control(self, record: Control) -> None:
        """Store a control record (never replayed), then announce it.

        A record about one user's streams (a kick, an inbox change) goes to the processes
        that follow the user; any other (preferences) to every process.
        """
        route = record.user_id if record.kind in _USER_CONTROLS and record.user_id else ""
        self._publish([(CONTROL_KEY + route, record.to_json())], None)

    def follow(self, keys: t.Sequence[str]) -> base.Followed | None:
        """Subscribe this process's feed to the channels of ``keys`` (once); wait until Redis confirmed it.

        ``None`` when each already was; else the head read before subscribing, and whether a
        key got a notice after it meanwhile (see :meth:`Broker.follow`). The first streams of
        several users that open together share one round of commands. While Redis is down
        this waits for the feed to be back, up to 5 s, then raises
        :class:`~sse_notify.errors.BrokerUnavailable`.
        """
        if not self._feeding:
            return None
        with self._follow_lock:
            new = False
            for key in keys:
                if key in self._followed:
                    self._leaving.pop(key, None)
                    new = new or not self._followed[key].ready.is_set()
                else:
                    new = True
        return self._follows.submit(tuple(keys)) if new else None

    def _follow_round(self, requests: list[tuple[str, ...]]) -> list[base.Followed | BaseException]:
        """Follow the keys of ``requests`` together: read the head, SUBSCRIBE those not followed, wait,
        read their newest cursors. One answer per request."""
        keys = list(dict.fromkeys(key for request in requests for key in request))
        try:
            # Read before the subscriptions are confirmed: later notices come live, or are read from here.
            since = self.head()
        except BrokerError as exc:
            return [exc] * len(requests)
        entries = []
        with self._follow_lock:
            channels = []
            for key in keys:
                self._leaving.pop(key, None)
                entry = self._followed.get(key)
                if entry is None:
                    entry = self._followed[key] = _Following(since)
                    channels.append(self._events + key)
                entries.append(entry)
            pubsub = self._pubsub
            if channels and pubsub is not None:
                # Else (or if this fails) the feed subscribes them when it has Redis again.
                with contextlib.suppress(redis.RedisError):
                    for chunk in range(0, len(channels), _CHUNK):
                        pubsub.subscribe(*channels[chunk : chunk + _CHUNK])
        deadline = time.monotonic() + _CONFIRM
        for key, entry in zip(keys, entries, strict=True):
            if not entry.ready.wait(max(0.0, deadline - time.monotonic())):
                error = BrokerUnavailable(f"{self.describe()}: the feed could not follow {key!r} (no Redis?)")
                return [error] * len(requests)
        try:
            newest = self._run(lambda client: client.hmget(f"{self.prefix}last", keys))
        except BrokerError as exc:
            return [exc] * len(requests)
        missed = {key for key, found in zip(keys, newest, strict=True) if int(found or 0) > since}
        return [base.Followed(since, any(key in missed for key in request)) for request in requests]

    def unfollow(self, user_id: str) -> None:
        """The user's last stream here closed: unsubscribe after :attr:`linger` seconds without one."""
        if user_id in self._followed:
            self._leaving.pop(user_id, None)
            self._leaving[user_id] = time.monotonic()

    def _start_feed(self, handler: base.FeedHandler) -> None:
        """Start this process's feed: one pub/sub connection, for broadcasts, control and followed users."""
        # Every item after this call is delivered: start from the head now. If Redis is
        # down, the feed reads it once Redis is back, so a process whose first stream
        # arrives during an outage still gets a feed.
        try:
            start: int | None = self.head()
        except BrokerError:
            start = None
        self._feed_task = spawn(lambda: self._feed(start), name="sse-notify-redis-feed")

    def _stop_feed(self) -> None:
        """Drop the pub/sub connection (which wakes the feed), and wait for the feed to end."""
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.connection.disconnect()
        if self._feed_task is not None:
            self._feed_task.join(5)
            self._feed_task = None

    def _subscribe(self, client: t.Any) -> tuple[t.Any, dict[str, int], list[t.Any]]:
        """Subscribe a new connection to everything followed, and wait for Redis to confirm it all.

        Returns the pub/sub, the keys with the cursor after which each must be caught up,
        and the messages that arrived meanwhile.
        """
        pubsub = _PubSub(client.connection_pool, ignore_subscribe_messages=False)
        with self._follow_lock:
            followed = dict(self._followed)
            for entry in followed.values():
                entry.ready.clear()
            channels = [self._events + key for key in (BROADCAST_KEY, CONTROL_KEY, *followed)]
            self._pubsub = pubsub
            for chunk in range(0, len(channels), _CHUNK):
                pubsub.subscribe(*channels[chunk : chunk + _CHUNK])
        waiting = set(channels)
        early: list[t.Any] = []
        deadline = time.monotonic() + _CONFIRM
        while waiting and not self._closed:
            if time.monotonic() > deadline:
                confirmed = len(channels) - len(waiting)
                raise redis.TimeoutError(f"Redis confirmed {confirmed} of {len(channels)} subscriptions")
            message = pubsub.get_message(timeout=_LISTEN)
            if message is None:
                continue
            if message["type"] == "subscribe":
                waiting.discard(self._confirmed(message))
            elif message["type"] == "message":
                early.append(message)
        starts = {key: entry.since for key, entry in followed.items()}
        return pubsub, starts, early

    def _confirmed(self, message: t.Any) -> str:
        """A subscription Redis confirmed: its follower may go on. Returns the channel."""
        channel = _text(message["channel"])
        entry = self._followed.get(channel[len(self._events) :])
        if entry is not None:
            entry.ready.set()
        return channel

    def _catch_up(self, client: t.Any, last: int, starts: dict[str, int], early: list[t.Any]) -> int:
        """Dispatch what the feed may have missed after ``last`` (each key after its start), and ``early``.

        A RESYNC first if a key's notices after that point are no longer all kept.
        """
        keys = [(BROADCAST_KEY, last), (CONTROL_KEY, last)]
        keys += [(key, max(last, start)) for key, start in starts.items()]
        found: dict[int, base.Item | None] = {}
        lost = False
        head = last
        for chunk in range(0, len(keys), _CHUNK):
            args: list[t.Any] = [self.prefix]
            for key, start in keys[chunk : chunk + _CHUNK]:
                args += [key, start]
            head, replies = self._scripts["catch_up"](args=args)
            for (key, _), (dropped, entries) in zip(keys[chunk : chunk + _CHUNK], replies, strict=True):
                lost = lost or bool(dropped)
                for entry in entries:
                    seq, values = _entry_fields(entry)
                    found[seq] = base.stored_item(seq, key, _text(values[b"c"]), _text(values[b"d"]))
        for message in early:
            for seq, item in self._rows(message):
                found.setdefault(seq, item)
        if int(head) < last:
            # Redis lost data (a restart without persistence): live cursors mean nothing now.
            log.warning("Redis cursor went back from %d to %d: closing streams to resync", last, int(head))
            self._deliver([RESYNC])
            return int(head)
        if lost:
            log.warning("feed missed notices that retention already dropped: closing streams to resync")
            self._deliver([RESYNC])
        fresh = sorted(seq for seq in found if seq > last)
        if fresh:
            self._deliver([found[seq] for seq in fresh])
            return fresh[-1]
        return last

    @staticmethod
    def _rows(message: t.Any) -> list[tuple[int, base.Item | None]]:
        """The items of one announcement (``seq \\t key \\t created \\t data`` per line)."""
        rows = [line.split("\t", 3) for line in _text(message["data"]).split("\n")]
        return [(int(seq), base.stored_item(int(seq), key, c, data)) for seq, key, c, data in rows]

    def _resync_if_back(self, client: t.Any, last: int) -> int:
        """``last``, or the head if it went back (Redis lost data: a restart without persistence)."""
        head = int(client.get(f"{self.prefix}seq") or 0)
        if head < last:
            # Live cursors mean nothing now; every client resumes and gets a reset.
            log.warning("Redis cursor went back from %d to %d: closing streams to resync", last, head)
            self._deliver([RESYNC])
            return head
        return last

    def _leave(self, pubsub: t.Any) -> None:
        """Unsubscribe from the users who have had no stream here for :attr:`linger` seconds."""
        cutoff = time.monotonic() - self.linger
        gone: list[str] = []
        # Under the lock, so that a follow of one of them subscribes after this unsubscribes.
        with self._follow_lock:
            while self._leaving:
                user_id, left = next(iter(self._leaving.items()))
                if left > cutoff:
                    break  # the rest left later
                del self._leaving[user_id]
                self._followed.pop(user_id, None)
                gone.append(self._events + user_id)
            for chunk in range(0, len(gone), _CHUNK):
                pubsub.unsubscribe(*gone[chunk : chunk + _CHUNK])

    def _feed(self, last: int | None) -> None:
        backoff = 0.1
        next_check = time.monotonic() + self.poll_interval
        while not self._closed:
            try:
                client = self._connection()
                if last is None:
                    # This feed could not start when subscribed (Redis was down).
                    # Streams that opened meanwhile may have missed notices
                    # published before this moment: make them resume by cursor.
                    last = int(client.get(f"{self.prefix}seq") or 0)
                    self._deliver([RESYNC])
                if self._pubsub is None:
                    pubsub, starts, early = self._subscribe(client)
                    if self._closed:
                        break
                    last = self._catch_up(client, last, starts, early)
                    backoff = 0.1
                pubsub = self._pubsub
                # Short waits, so that close() is seen soon: redis-py's pub/sub reconnects by
                # itself after close() dropped its connection, and then waits this long.
                message = pubsub.get_message(timeout=min(_LISTEN, self.poll_interval))
                if self._closed:
                    break  # deliver nothing more
                if pubsub.reconnected:
                    # redis-py reconnected and resubscribed by itself: what was published
                    # meanwhile never came. Subscribe afresh and catch up.
                    raise redis.ConnectionError("the pub/sub connection was lost")
                now = time.monotonic()
                if self._leaving and now - next(iter(self._leaving.values())) >= self.linger:
                    self._leave(pubsub)
                if message is None or message["type"] != "message":
                    if message is not None and message["type"] == "subscribe":
                        self._confirmed(message)
                    if now >= next_check:
                        next_check = now + self.poll_interval
                        last = self._resync_if_back(client, last)
                    continue
                rows = self._rows(message)
                if rows[-1][0] > last:
                    self._deliver([item for seq, item in rows if seq > last])
                    last = rows[-1][0]
            except redis.RedisError as exc:
                if self._closed:
                    break
                log.warning("feed lost Redis (%s); reconnecting in %.1f s", exc, backoff)
                self._drop_pubsub()
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                if self._closed:  # close() pulled the connection from under a read
                    break
                log.exception("feed failed; retrying in %.1f s", backoff)
                self._drop_pubsub()
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._drop_pubsub()

    def _drop_pubsub(self) -> None:
        with self._follow_lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
