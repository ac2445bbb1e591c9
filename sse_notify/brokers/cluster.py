"""``redis+cluster://host:port[,host:port…]``: notices in a Redis Cluster, spread over its shards.

Why a store of its own, beside ``redis.py``: a Lua script in a cluster may only touch the
keys of one hash slot, so the single Redis store's one script that numbers, stores and
announces a batch cannot run here. Every key below carries a hash tag (``{…}``), and each
script touches one tag's keys.

Layout (prefix ``p``, ``sse_notify:`` by default; ``a`` is an audience: a user id, ``*``
for broadcasts, ``!`` for control records, ``#<topic>``):

==============================  =====================================================
``{p}{~seq}:n``                 the id counter: one for every notice (INCRBY per batch)
``{p}{a}:log``                  the audience's stream, entry id ``<id>-0``, capped by
                                count and age, expiring with age
``{p}{a}:meta``                 hash: ``floor`` (newest id retention dropped),
                                ``last`` (newest id stored), ``through`` (read-all)
``{p}{a}:marks``                hash: inbox marks, as on one Redis
``{p}{a}:groups``               hash: group keys, each the id of its newest entry
``{p}{a}:ctl``                  stream: control records about the user (kick, inbox
                                changes), never replayed
``{p}{a}:ev``                   the audience's **sharded** pub/sub channel
``{p}{a}:prefs``                the user's preferences (JSON); ``{p}{~prefs}:any``
                                says whether anyone has set some
``{p}{a}:rec:{kind}``           hash: the user's records of a kind, by name
``{p}{~i:<sha1>}:idem``         an idempotency key's claim, then its notices' ids
``{p}{~workers}:z``             sorted set: live workers (presence), by expiry
``{p}{~w:<worker>}:p``          hash: a worker's open streams per user
``{p}{~s:<n>}:{z,h,t,n}``       the scheduler, in 16 buckets (by kind and key): due
                                times, entries, claim tokens, counts per kind
==============================  =====================================================

So a user's history, cursor floor, inbox state, records and channel live in the user's own
slot, and storage and load spread over the shards with the users. Broadcasts (``{*}``)
and the control records for every process (``{!}``) each live in one slot: every worker
reads them whatever the layout, and retention caps them. Presence is one small sorted set
plus a hash per worker (each in its worker's slot); the scheduler is spread over 16 slots.

**Ids and order.** Ids come from one counter, so a user's notices and the broadcasts in
their inbox never share one. A batch takes its ids first, then each audience's part is
written by one script in that audience's slot, which refuses ids at or below the newest
it holds (another publisher got there first): the part then takes new ids. So each
audience's log is in id order, but two audiences' notices may be stored out of id order.
A stream therefore resumes from a position per audience (``sse_notify.positions``), not
from one number.

**Nothing acknowledged is lost to a failover.** Each write is followed by ``WAIT`` on the
same connection (``?replicas=1`` by default): a publish is answered only once a replica
has the notice, so a primary that dies after answering loses nothing its replica takes
over with. A shard whose replicas do not answer within ``?wait_ms=`` fails the publish
(503; the notice may still be kept: a retry with the same ``Idempotency-Key`` stores it
once). Writes follow ``MOVED``/``ASK`` redirects and wait out a failover (up to 10 s).

**Targeted delivery.** Each worker keeps one sharded pub/sub connection per primary that
serves one of its audiences (a handful, whatever the number of streams), each read by its
own greenlet. When it follows an audience it reads the audience's newest id, subscribes,
and on Redis's confirmation catches up the log from there before it reads on, so nothing
is missed between the two. A subscription that Redis drops (its slot moved in a
resharding, its primary failed) is made again on the slot's new owner and caught up from
the newest id the feed handed over for that audience.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import typing as t
import zlib
from urllib.parse import parse_qsl, unquote

from ..concurrency import Batcher, Task, spawn
from ..control import Control
from ..delivery import group_key
from ..errors import BrokerError, BrokerUnavailable, ConfigError, IdempotencyKeyReused
from ..notices import Notice, topic_of, utc_iso_ago, utc_now_iso
from ..schedule import Due, checked_kind
from . import base
from .base import BROADCAST_KEY, CONTROL_KEY, Published, Replay
from .redis import (
    _USER_CONTROLS,
    RESYNC,
    USER_SCRIPTS,
    RedisStore,
    _entry_fields,
    _entry_notice,
    _seq,
    _text,
)

try:
    import redis
    import redis.cluster
    import redis.exceptions
except ImportError:  # pragma: no cover - depends on the install
    redis = None  # type: ignore[assignment]

__all__ = ["RedisClusterBroker"]

log = logging.getLogger("sse_notify.brokers.cluster")

#: The longest a reader waits for a message before it looks whether it was closed.
_LISTEN = 0.2
#: The longest a follower waits for its audiences' subscriptions (and catch-ups).
_CONFIRM = 5.0
#: The longest a write waits out a failover or a slot migration.
_FAILOVER = 10.0
#: How long a claim of an idempotency key lasts before another request may take it over.
_LEASE = 5.0
#: How many scheduler buckets (slots) entries spread over.
_BUCKETS = 16
#: How often a publish of grouped notices reads its groups again when they changed meanwhile.
_GROUP_TRIES = 100
#: Control records kept per user (they are never replayed; only a feed's catch-up reads them).
_CONTROLS_KEPT = 100

_TRIM = """
local function trim(log, meta, marks, keep, cutoff, user)
  local dropped = nil
  local n = redis.call('XLEN', log)
  local function drop(id)
    redis.call('XDEL', log, id)
    if user then redis.call('HDEL', marks, string.match(id, '^(%d+)')) end
    dropped = id
  end
  if n > keep then
    local old = redis.call('XRANGE', log, '-', '+', 'COUNT', n - keep)
    for _, e in ipairs(old) do drop(e[1]) end
  end
  while cutoff ~= '' do
    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
    if #first == 0 or first[1][2][2] >= cutoff then break end
    drop(first[1][1])
  end
  if dropped then
    local seq = tonumber(string.match(dropped, '^(%d+)'))
    if seq > tonumber(redis.call('HGET', meta, 'floor') or '0') then
      redis.call('HSET', meta, 'floor', seq)
    end
  end
  return dropped
end
"""

#: One audience's part of a batch. KEYS: log, meta, marks, groups. ARGV: keep, ttl, created,
#: channel, the audience, whether it is a user ('1'), the number of grouped items and their
#: records (index, group key, the entry the publisher read, its mark, the read-all cursor, the
#: entry it replaces), then (id, text) pairs in id order.
_PUBLISH = (
    _TRIM
    + """
local log, meta, marks, groups = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local keep, ttl, created, channel, key = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local user = ARGV[6] == '1'
local ngroups = tonumber(ARGV[7])
local first = 8 + ngroups * 6
local firstid = tonumber(ARGV[first])
if tonumber(redis.call('HGET', meta, 'last') or '0') >= firstid then
  -- Stored by an earlier try of this same write, or another publisher got later ids in first.
  if #redis.call('XRANGE', log, firstid .. '-0', firstid .. '-0') > 0 then return 'stored' end
  return 'stale'
end
local grouped = {}
for g = 0, ngroups - 1 do
  local b = 8 + g * 6
  local index, gkey, prev = tonumber(ARGV[b]), ARGV[b + 1], ARGV[b + 2]
  if (redis.call('HGET', groups, gkey) or '') ~= prev then return 'retry' end
  if prev ~= '' then
    if (redis.call('HGET', marks, prev) or '') ~= ARGV[b + 3] then return 'retry' end
    if (redis.call('HGET', meta, 'through') or '') ~= ARGV[b + 4] then return 'retry' end
  end
  grouped[index] = {gkey, ARGV[b + 5]}
end
local lines, last = {}, nil
for i = first, #ARGV, 2 do
  local id, data = ARGV[i], ARGV[i + 1]
  redis.call('XADD', log, id .. '-0', 'c', created, 'd', data)
  local group = grouped[(i - first) / 2 + 1]
  if group then
    redis.call('HSET', groups, group[1], id)
    redis.call('PEXPIRE', groups, ttl)
    if group[2] ~= '' then
      redis.call('XDEL', log, group[2] .. '-0')
      redis.call('HDEL', marks, group[2])
    end
  end
  last = id
  lines[#lines + 1] = id .. '\\t' .. key .. '\\t' .. created .. '\\t' .. data
end
redis.call('HSET', meta, 'last', last)
trim(log, meta, marks, keep, '', user)
redis.call('PEXPIRE', log, ttl)
redis.call('SPUBLISH', channel, table.concat(lines, '\\n'))
return 'ok'
"""
)

_FLOOR = """
local function floor_of(log, meta)
  local f = tonumber(redis.call('HGET', meta, 'floor') or '0')
  if redis.call('EXISTS', log) == 0 then
    local last = tonumber(redis.call('HGET', meta, 'last') or '0')
    if last > f then f = last end
  end
  return f
end
"""

#: KEYS: log, meta. ARGV: the cursor ('' for none). The newest id retention dropped, the
#: newest stored, and the entries after the cursor.
_REPLAY = (
    _FLOOR
    + """
local found = {}
if ARGV[1] ~= '' then found = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-0', '+') end
return {floor_of(KEYS[1], KEYS[2]), tonumber(redis.call('HGET', KEYS[2], 'last') or '0'), found}
"""
)

#: A feed's catch-up of one audience. KEYS: log, meta, ctl. ARGV: the id after which to read.
#: Whether some of it is no longer kept (or Redis lost data: the newest id went back), the
#: entries and the control records after it.
_CATCH_UP = (
    _FLOOR
    + """
local from = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local lost = (floor_of(KEYS[1], KEYS[2]) > from or last < from) and 1 or 0
return {lost, redis.call('XRANGE', KEYS[1], '(' .. from .. '-0', '+'),
        redis.call('XRANGE', KEYS[3], '(' .. from .. '-0', '+')}
"""
)

#: A control record about one user. KEYS: ctl, meta. ARGV: id, created, text, channel, ttl, kept.
_CONTROL = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], ARGV[1] .. '-0', 'c', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SPUBLISH', ARGV[4], ARGV[1] .. '\\t!\\t' .. ARGV[2] .. '\\t' .. ARGV[3])
return 'ok'
"""

_SWEEP = (
    _TRIM
    + """
local before = redis.call('XLEN', KEYS[1])
trim(KEYS[1], KEYS[2], KEYS[3], 1e18, ARGV[1], ARGV[2] == '1')
return before - redis.call('XLEN', KEYS[1])
"""
)

#: KEYS: idem. ARGV: fingerprint, created, ids (comma-separated), ttl ms, lease ms.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('HMGET', KEYS[1], 'f', 's', 'c', 'i', 'l')
if e[1] then
  if e[1] ~= ARGV[1] then return {'reused'} end
  if e[2] == 'd' then return {'done', e[3], e[4]} end
  if tonumber(e[5]) > now then return {'busy'} end
  redis.call('HSET', KEYS[1], 'l', now + tonumber(ARGV[5]))
  return {'take', e[3], e[4]}
end
redis.call('HSET', KEYS[1], 'f', ARGV[1], 's', 'p', 'c', ARGV[2], 'i', ARGV[3], 'l', now + tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'new'}
"""

#: KEYS: idem. ARGV: fingerprint, the ids stored.
_CLAIMED = """
if redis.call('HGET', KEYS[1], 'f') == ARGV[1] then redis.call('HSET', KEYS[1], 's', 'd', 'i', ARGV[2]) end
"""

#: KEYS: idem. ARGV: fingerprint. A claim whose request failed: another may take it over now.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'f') == ARGV[1] and redis.call('HGET', KEYS[1], 's') == 'p' then
  redis.call('HSET', KEYS[1], 'l', 0)
end
"""

#: KEYS: idem. ARGV: fingerprint, the ids the claim will store.
_CLAIM_IDS = """
if redis.call('HGET', KEYS[1], 'f') == ARGV[1] then redis.call('HSET', KEYS[1], 'i', ARGV[2]) end
"""

#: KEYS: the workers' sorted set. ARGV: worker, ttl ms. Renews the worker, forgets the dead.
_PRESENCE_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

#: KEYS: a worker's hash. ARGV: ttl ms, then (user, streams) pairs.
_PRESENCE_SET = """
for i = 2, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HDEL', KEYS[1], ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

#: KEYS: the workers' sorted set. The live workers.
_PRESENCE_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

# The scheduler, per bucket: KEYS z (member "<kind>\0<key>" scored by due time or lease end),
# h (same member: "<token>\t<due>\t<payload>"), t (token counter), n (entries per kind).
_SCHEDULE = """
local z, h, tk, n = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for i = 1, #ARGV, 4 do
  local member = ARGV[i] .. '\\0' .. ARGV[i + 1]
  local token = redis.call('INCR', tk)
  if redis.call('HSET', h, member, token .. '\\t' .. ARGV[i + 2] .. '\\t' .. ARGV[i + 3]) == 1 then
    redis.call('HINCRBY', n, ARGV[i], 1)
  end
  redis.call('ZADD', z, ARGV[i + 2], member)
end
"""

_UNSCHEDULE = """
local member = ARGV[1] .. '\\0' .. ARGV[2]
redis.call('ZREM', KEYS[1], member)
local gone = redis.call('HDEL', KEYS[2], member)
if gone == 1 then redis.call('HINCRBY', KEYS[4], ARGV[1], -1) end
return gone
"""

_CLAIM_DUE = """
local z, h, tk = KEYS[1], KEYS[2], KEYS[3]
local now, limit, lease_end = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local members = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local out = {}
for i = 1, #members, 2 do
  local member = members[i]
  local value = redis.call('HGET', h, member)
  if value then
    local t1 = string.find(value, '\\t', 1, true)
    local t2 = string.find(value, '\\t', t1 + 1, true)
    local due, payload = string.sub(value, t1 + 1, t2 - 1), string.sub(value, t2 + 1)
    local token = redis.call('INCR', tk)
    redis.call('HSET', h, member, token .. '\\t' .. due .. '\\t' .. payload)
    redis.call('ZADD', z, lease_end, member)
    local cut = string.find(member, '\\0', 1, true)
    out[#out + 1] = members[i + 1]
    out[#out + 1] = string.sub(member, 1, cut - 1)
    out[#out + 1] = string.sub(member, cut + 1)
    out[#out + 1] = due
    out[#out + 1] = payload
    out[#out + 1] = token
  else
    redis.call('ZREM', z, member)
  end
end
return out
"""

_FINISH = """
for i = 1, #ARGV, 3 do
  local member = ARGV[i] .. '\\0' .. ARGV[i + 1]
  local value = redis.call('HGET', KEYS[2], member)
  if value and string.sub(value, 1, #ARGV[i + 2] + 1) == ARGV[i + 2] .. '\\t' then
    redis.call('HDEL', KEYS[2], member)
    redis.call('ZREM', KEYS[1], member)
    redis.call('HINCRBY', KEYS[4], ARGV[i], -1)
  end
end
"""

_SCRIPTS = {
    "publish": _PUBLISH,
    "replay": _REPLAY,
    "catch_up": _CATCH_UP,
    "control": _CONTROL,
    "sweep": _SWEEP,
    "claim": _CLAIM,
    "claimed": _CLAIMED,
    "claim_ids": _CLAIM_IDS,
    "release": _RELEASE,
    **USER_SCRIPTS,
    "presence_renew": _PRESENCE_RENEW,
    "presence_set": _PRESENCE_SET,
    "presence_live": _PRESENCE_LIVE,
    "schedule": _SCHEDULE,
    "unschedule": _UNSCHEDULE,
    "claim_due": _CLAIM_DUE,
    "finish": _FINISH,
}
_SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _SCRIPTS.items()}


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, t.Any], dict[str, str]]:
    """The seed nodes, redis-py's connection options and our query options of a cluster URL.

    :raises ConfigError: for a URL without nodes, or with a port that is not a number.
    """
    scheme, _, rest = url.partition("://")
    netloc, _, query = rest.partition("?")
    netloc = netloc.split("/", 1)[0]
    kwargs: dict[str, t.Any] = {}
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, password = auth.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if password:
            kwargs["password"] = unquote(password)
    if scheme.lower().startswith("rediss"):
        kwargs["ssl"] = True
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "6379")
        if not host or not port.isdigit():
            raise ConfigError(f"Redis Cluster URL {url!r}: each node must be host:port, got {part!r}")
        nodes.append((host, int(port)))
    return nodes, kwargs, dict(parse_qsl(query, keep_blank_values=True))


class _Follow:
    """An audience the feed follows: the newest id it handed over, and whether it caught up."""

    __slots__ = ("pos", "ready", "shard")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.ready = threading.Event()
        self.shard: _Shard | None = None


class _Shard:
    """One sharded pub/sub connection of the feed (to one primary), read by its own task."""

    __slots__ = ("keys", "name", "pubsub", "task")

    def __init__(self, name: str, pubsub: t.Any) -> None:
        self.name = name
        self.pubsub = pubsub
        self.keys: set[str] = set()
        self.task: Task | None = None


class RedisClusterBroker(RedisStore):
    """Notices in a Redis Cluster: storage and delivery spread over its shards."""

    positional = True  # audiences are stored out of id order relative to each other
    unavailable_errors = (
        (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError)
        if redis is not None
        else ()
    )
    failure_errors = (redis.RedisError,) if redis is not None else ()

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sse_notify:",
        retention_count: int = 1000,
        retention_age: float = 7 * 86400,
        poll_interval: float = 1.0,
        linger: float = 10.0,
        replicas: int = 1,
        wait_ms: int = 1000,
    ) -> None:
        if redis is None:
            raise ConfigError('the Redis Cluster store needs redis-py: pip install "sse-notify[redis]"')
        if "{" in prefix or "}" in prefix:
            raise ConfigError(f"the Redis Cluster prefix must not contain braces, got {prefix!r}")
        super().__init__()
        self.url = url
        self.nodes, self._options, _ = parse_cluster_url(url)
        self.prefix = prefix
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.poll_interval = poll_interval
        self.linger = linger
        self.replicas = replicas
        self.wait_ms = wait_ms
        self._scripts: dict[str, t.Any] = {}
        self._feed_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._followed: dict[str, _Follow] = {}
        self._leaving: dict[str, float] = {}
        self._shards: dict[str, _Shard] = {}
        self._janitor: Task | None = None
        self._follows: Batcher[tuple[str, ...], None] = Batcher(self._follow_round)

    def _forked(self) -> None:
        super()._forked()
        self._feed_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._followed, self._leaving, self._shards = {}, {}, {}
        self._janitor = None

    def describe(self) -> str:
        """``Redis Cluster at host:port,...``."""
        return "Redis Cluster at " + ",".join(f"{host}:{port}" for host, port in self.nodes)

    # -- keys -------------------------------------------------------------

    def _key(self, tag: str, name: str) -> str:
        return f"{self.prefix}{{{tag}}}:{name}"

    def _audience(self, key: str) -> list[str]:
        """The keys a publish to audience ``key`` touches: log, meta, marks, groups."""
        return [self._key(key, name) for name in ("log", "meta", "marks", "groups")]

    def _log(self, user_id: str) -> str:
        return self._key(user_id, "log")

    def _marks(self, user_id: str) -> str:
        return self._key(user_id, "marks")

    def _groups(self, user_id: str) -> str:
        return self._key(user_id, "groups")

    def _through(self, user_id: str) -> tuple[str, str]:
        return self._key(user_id, "meta"), "through"

    def _records(self, kind: str, user_id: str) -> str:
        return self._key(user_id, f"rec:{kind}")

    def _channel(self, key: str) -> str:
        return self._key(key, "ev")

    def _of_channel(self, channel: str) -> str:
        return channel[len(self.prefix) + 1 : -len("}:ev")]

    def _bucket(self, kind: str, key: str) -> list[str]:
        bucket = zlib.crc32((kind + "\0" + key).encode()) % _BUCKETS
        tag = f"~s:{bucket}"
        return [self._key(tag, name) for name in ("z", "h", "t", "n")]

    # -- connection -------------------------------------------------------

    def _connect(self) -> t.Any:
        client = redis.cluster.RedisCluster(
            startup_nodes=[_node_at(host, port) for host, port in self.nodes],
            socket_timeout=5,
            socket_connect_timeout=2,
            # Per primary: at most this many, and a caller waits for a free one (as on one Redis).
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=16,
            timeout=5,
            **self._options,
        )
        self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
        return client

    def _disconnect(self, client: t.Any) -> None:
        client.close()

    def _ping(self, client: t.Any) -> None:
        client.ping(target_nodes=redis.cluster.RedisCluster.PRIMARIES)

    def _write(
        self, client: t.Any, tag_key: str, name: str, keys: list[str], args: list[t.Any], *, wait: bool = True
    ) -> t.Any:
        """Run script ``name`` on the primary of ``tag_key``'s slot, then ``WAIT`` for its replicas.

        On that primary's own connection (``WAIT`` counts the writes of its connection),
        following ``MOVED``/``ASK`` redirects and waiting out a failover. ``wait=False``: no
        ``WAIT`` (a write whose loss in a failover only repeats some work, as a claim's lease).
        The name ``INCRBY`` runs that command itself (it needs no script).
        """
        replicas = self.replicas if wait else 0
        if name == "INCRBY":
            command: tuple[t.Any, ...] = ("INCRBY", *keys, *args)
        else:
            command = ("EVALSHA", _SHAS[name], len(keys), *keys, *args)
        deadline = time.monotonic() + _FAILOVER
        asking: t.Any = None
        while True:
            try:
                node = asking or client.nodes_manager.get_node_from_slot(client.keyslot(tag_key))
                pipe = client.get_redis_connection(node).pipeline(transaction=False)
                if asking is not None:
                    pipe.execute_command("ASKING")
                pipe.execute_command(*command)
                if replicas:
                    pipe.execute_command("WAIT", replicas, self.wait_ms)
                out = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.SlotNotCoveredError) as exc:
                # The primary is gone (or not known yet): its replica takes over.
                if time.monotonic() > deadline:
                    raise
                log.info("write to %s failed (%s): learning the cluster's layout again", tag_key, exc)
                time.sleep(0.2)
                self._refresh(client)
                asking = None
                continue
            if asking is not None:
                out = out[1:]
            reply, asking = out[0], None
            if isinstance(reply, redis.exceptions.NoScriptError):
                client.get_redis_connection(node).script_load(_SCRIPTS[name])
                continue
            if isinstance(reply, redis.exceptions.AskError):
                asking = self._node(client, reply.host, reply.port)
                continue
            if isinstance(reply, redis.exceptions.ResponseError) and _transient(reply):
                if time.monotonic() > deadline:
                    raise reply
                if isinstance(reply, redis.exceptions.MovedError):
                    self._refresh(client)
                else:
                    time.sleep(0.05)
                continue
            if isinstance(reply, Exception):
                raise reply
            if replicas:
                acked = out[1]
                if isinstance(acked, Exception):
                    raise acked
                if int(acked) < replicas:
                    raise BrokerUnavailable(
                        f"{self.describe()}: {acked} of {replicas} replica(s) of {node.name} "
                        f"acknowledged a write within {self.wait_ms} ms"
                    )
            return reply

    @staticmethod
    def _node(client: t.Any, host: str, port: int) -> t.Any:
        node = client.nodes_manager.get_node(host=host, port=int(port))
        return node if node is not None else _node_at(host, int(port))

    @staticmethod
    def _refresh(client: t.Any) -> None:
        """Learn which primary serves which slot (after a redirect or a failover)."""
        with contextlib.suppress(redis.RedisError):
            client.nodes_manager.initialize()

    # -- writing ----------------------------------------------------------

    def _ids(self, client: t.Any, count: int) -> list[int]:
        last = int(self._write(client, "~seq", "INCRBY", [self._key("~seq", "n")], [count]))
        return list(range(last - count + 1, last + 1))

    def _publish(
        self,
        items: t.Sequence[tuple[str | None, str]],
        once: tuple[str, str, float] | None,
        taken: list[int] | None = None,
    ) -> Published:
        """Store ``items``: with ``taken``, under those ids (taken together for a round of publishes)."""
        if not items:
            return Published([], False)
        self._check_items(items)
        created_at = utc_now_iso()

        def work(client: t.Any) -> Published:
            created = created_at
            if once is None:
                ids = list(taken) if taken is not None else self._ids(client, len(items))
            else:
                claimed = self._claim(client, once, created, len(items))
                if isinstance(claimed, Published):
                    return claimed
                ids, created = claimed
            texts = [data for _, data in items]
            runs: dict[str, list[int]] = {}
            for index, (user_id, _) in enumerate(items):
                runs.setdefault(BROADCAST_KEY if user_id is None else user_id, []).append(index)
            try:
                for key, indexes in runs.items():
                    self._write_run(client, key, indexes, ids, texts, created)
            except BaseException:
                if once is not None:  # a retry of the request may take the claim over at once
                    idem = self._idem(once[0])
                    with contextlib.suppress(Exception):
                        self._write(client, idem, "release", [idem], [once[1]], wait=False)
                raise
            if once is not None:
                idem = self._idem(once[0])
                self._write(client, idem, "claimed", [idem], [once[1], ",".join(map(str, ids))])
            notices = [
                Notice.stored(ids[i], user_id, created, texts[i]) for i, (user_id, _) in enumerate(items)
            ]
            return Published(notices, False)

        published: Published = self._run(work)
        return published

    def _write_run(
        self, client: t.Any, key: str, indexes: list[int], ids: list[int], texts: list[str], created: str
    ) -> None:
        """Store one audience's part of a batch (new ids for it while another publisher was first)."""
        user = key not in (BROADCAST_KEY, CONTROL_KEY) and topic_of(key) is None
        for _ in range(_GROUP_TRIES):
            records: list[t.Any] = []
            run_texts = [texts[i] for i in indexes]
            for position, index in enumerate(indexes, 1):
                gkey = group_key(texts[index]) if user else None
                if gkey is not None:
                    record = self._fold_read(client, key, gkey, texts[index], created)
                    run_texts[position - 1] = record.pop()
                    records += [position, gkey, *record]
            args: list[t.Any] = [
                self.retention_count,
                self._ttl_ms(),
                created,
                self._channel(key),
                key,
                "1" if user else "",
                len(records) // 6,
                *records,
            ]
            for index, text in zip(indexes, run_texts, strict=True):
                args += [ids[index], text]
            reply = _text(self._write(client, key, "publish", self._audience(key), args))
            if reply in ("ok", "stored"):
                for index, text in zip(indexes, run_texts, strict=True):
                    texts[index] = text
                return
            if reply == "stale":
                fresh = self._ids(client, len(indexes))
                for index, seq in zip(indexes, fresh, strict=True):
                    ids[index] = seq
        raise BrokerError(f"{self.describe()}: grouped notices kept changing under {_GROUP_TRIES} tries")

    def _idem(self, key: str) -> str:
        return self._key("~i:" + hashlib.sha1(key.encode()).hexdigest(), "idem")

    def _claim(
        self, client: t.Any, once: tuple[str, str, float], created: str, count: int
    ) -> Published | tuple[list[int], str]:
        """Claim an idempotency key: the notices an earlier request stored, or the ids and time to store with.

        A request that finds the key claimed by another still storing waits for it; one that
        finds a claim whose request died (its lease ran out) stores that claim's notices, each
        audience's part once (with the ids the claim kept, if it got that far).
        """
        key, fingerprint, ttl = once
        idem = self._idem(key)
        args = [fingerprint, created, "", max(1, int(ttl * 1000)), int(_LEASE * 1000)]
        deadline = time.monotonic() + _LEASE + 1
        while True:
            # No WAIT yet: the claim's ids are kept (and waited for) before anything is stored.
            reply = [_text(part) for part in self._write(client, idem, "claim", [idem], args, wait=False)]
            if reply[0] in ("new", "take"):
                if reply[0] == "take" and reply[2]:
                    return [int(i) for i in reply[2].split(",")], reply[1]
                created = created if reply[0] == "new" else reply[1]
                try:
                    ids = self._ids(client, count)
                    # Kept with the claim: a request that takes it over writes these, not new ones.
                    self._write(client, idem, "claim_ids", [idem], [fingerprint, ",".join(map(str, ids))])
                except BaseException:
                    with contextlib.suppress(Exception):
                        self._write(client, idem, "release", [idem], [fingerprint], wait=False)
                    raise
                return ids, created
            if reply[0] == "reused":
                raise base.key_reused(key)
            if reply[0] == "done":
                return Published([], True) if not reply[2] else self._replayed(reply[1], reply[2])
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"Idempotency-Key {key!r}: another request is still storing its notices"
                )
            time.sleep(0.02)

    def _replayed(self, created: str, ids: str) -> Published:
        return Published([Notice.stored(int(i), None, created, "") for i in ids.split(",")], True)

    def publish_once(
        self, items: t.Sequence[tuple[str | None, str]], key: str, fingerprint: str, ttl: float
    ) -> Published:
        """Store the notices and the key together, unless the key was used within ``ttl`` seconds."""
        published = self._publish(items, (key, fingerprint, ttl))
        if published.replayed:  # rebuild the notices from the request, with the stored ids
            notices = [
                Notice.stored(stored.id, user_id, stored.created_at, data)
                for stored, (user_id, data) in zip(published.notices, items, strict=True)
            ]
            return Published(notices, True)
        return published

    def publish_requests(self, requests: t.Sequence[base.Request]) -> list[Published | BaseException]:
        """Several publishes (a round of concurrent ones), one after another.

        Those without an idempotency key take their ids with one ``INCRBY`` for the round:
        every publish visits the counter's primary, which binds a cluster's publish rate.
        """
        plain = sum(len(items) for items, once in requests if once is None)
        try:
            ids = self._run(lambda client: self._ids(client, plain)) if plain > 1 else None
        except BrokerError as exc:
            return [exc] * len(requests)
        results: list[Published | BaseException] = []
        for items, once in requests:
            try:
                if once is not None:
                    results.append(self.publish_once(items, *once))
                elif ids is None:
                    results.append(self._publish(items, None))
                else:
                    mine, ids = ids[: len(items)], ids[len(items) :]
                    results.append(self._publish(items, None, mine))
            except (BrokerError, IdempotencyKeyReused) as exc:
                results.append(exc)
        return results

    def publish_control(self, record: Control) -> None:
        """Store a control record (never replayed), then announce it.

        One about a user's streams (a kick, an inbox change) is kept in the user's slot and
        announced on the user's channel; any other (preferences) under ``!`` for every process.
        """
        if record.kind in _USER_CONTROLS and record.user_id:
            user = record.user_id

            def work(client: t.Any) -> None:
                seq = self._ids(client, 1)[0]
                keys = [self._key(user, "ctl"), self._key(user, "meta")]
                args = [
                    seq,
                    utc_now_iso(),
                    record.to_json(),
                    self._channel(user),
                    self._ttl_ms(),
                    _CONTROLS_KEPT,
                ]
                self._write(client, user, "control", keys, args)

            self._run(work)
            return
        self._publish([(CONTROL_KEY, record.to_json())], None)

    def trim_expired(self) -> int:
        """Drop notices older than the retention age from every log (a SCAN over every primary)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        pattern = escaped + "{*}:log"
        cutoff = utc_iso_ago(self.retention_age)

        def work(client: t.Any) -> int:
            dropped = 0
            for name in client.scan_iter(match=pattern, count=500, _type="stream"):
                key = self._of_channel(_text(name)[: -len("log")] + "ev")
                if key.startswith("~"):
                    continue
                keys = [self._key(key, "log"), self._key(key, "meta"), self._key(key, "marks")]
                user = "" if key in (BROADCAST_KEY, CONTROL_KEY) or topic_of(key) is not None else "1"
                dropped += int(self._scripts["sweep"](keys=keys, args=[cutoff, user]))
            return dropped

        dropped: int = self._run(work)
        return dropped

    # -- reading ----------------------------------------------------------

    def head(self) -> int:
        """The newest id issued."""
        value = self._run(lambda client: client.get(self._key("~seq", "n")))
        return int(value) if value else 0

    def replay(self, user_id: str, last_event_id: str, topics: t.Sequence[str] = ()) -> Replay:
        """The user's notices, the broadcasts and the topics' after the client's position.

        ``last_event_id`` is one id (after it, for every audience) or a position per audience
        (``sse_notify.positions``). Each audience is read on its own shard.
        """
        from ..positions import Positions

        keys = [user_id, BROADCAST_KEY, *base.topic_keys(topics)]
        given = Positions.parse(keys, last_event_id)

        def work(client: t.Any) -> Replay:
            head = int(client.get(self._key("~seq", "n")) or 0)
            found = []
            for index, key in enumerate(keys):
                cursor = "" if given is None else str(given.values[index])
                found.append(self._scripts["replay"](keys=self._audience(key)[:2], args=[cursor]))
            lasts = [int(last) for _, last, _ in found]
            if given is None or max(given.values) > head:
                # Not an id this store issued: start now, from each audience's newest.
                return Replay([], head, "unknown", Positions(keys, lasts))
            reset = None
            starts: list[int] = []
            notices: list[Notice] = []
            for index, (key, (floor, _, entries)) in enumerate(zip(keys, found, strict=True)):
                start = given.values[index]
                if start < int(floor):
                    start, reset = int(floor), "expired"
                starts.append(start)
                notices += [n for n in (_entry_notice(e, key) for e in entries) if n.id > start]
            notices.sort(key=lambda n: n.id)
            return Replay(notices, max(starts), reset, Positions(keys, starts))

        replay: Replay = self._run(work)
        return replay

    # -- inboxes ----------------------------------------------------------

    def inbox_ids(self, user_id: str) -> list[int]:
        """Ids of the user's notices and the broadcasts, newest first."""

        def work(client: t.Any) -> list[int]:
            mine = client.xrevrange(self._key(user_id, "log"), max="+", min="-")
            everyone = client.xrevrange(self._key(BROADCAST_KEY, "log"), max="+", min="-")
            return sorted((_seq(e[0]) for e in (*mine, *everyone)), reverse=True)

        ids: list[int] = self._run(work)
        return ids

    def inbox_notices(self, user_id: str, ids: t.Sequence[int]) -> list[Notice]:
        """The user's stored notices (own or broadcast) with these ids, in that order."""
        if not ids:
            return []

        def work(client: t.Any) -> list[Notice]:
            found = {}
            for key in (user_id, BROADCAST_KEY):
                pipe = client.pipeline()
                for seq in ids:
                    pipe.xrange(self._key(key, "log"), min=f"{seq}-0", max=f"{seq}-0")
                for entries in pipe.execute():
                    for entry in entries:
                        notice = _entry_notice(entry, key)
                        found[notice.id] = notice
            return [found[seq] for seq in ids if seq in found]

        notices: list[Notice] = self._run(work)
        return notices

    # -- preferences --------------------------------------------------------

    def preferences(self, user_ids: t.Sequence[str]) -> dict[str, str]:
        """The stored preferences of those of these users who set some (one GET per user's slot)."""
        if not user_ids:
            return {}
        users = list(dict.fromkeys(user_ids))
        found = self._run(lambda client: client.mget_nonatomic([self._key(u, "prefs") for u in users]))
        return {user: _text(text) for user, text in zip(users, found, strict=True) if text is not None}

    def preferences_exist(self) -> bool:
        """Whether any user has set preferences."""
        return bool(self._run(lambda client: client.exists(self._key("~prefs", "any"))))

    def set_preferences(self, user_id: str, text: str) -> None:
        """Replace the user's preferences."""

        def work(client: t.Any) -> None:
            client.set(self._key(user_id, "prefs"), text)
            client.set(self._key("~prefs", "any"), 1)

        self._run(work)

    # -- presence -----------------------------------------------------------

    def presence_update(self, worker: str, counts: t.Mapping[str, int], ttl: float) -> None:
        """Set the worker's counts of these users and renew its lifetime (a script in each of two slots)."""
        ms = max(1, int(ttl * 1000))
        args: list[t.Any] = [ms]
        for user_id, streams in counts.items():
            args += [user_id, streams]

        def work(client: t.Any) -> None:
            self._scripts["presence_set"](keys=[self._key(f"~w:{worker}", "p")], args=args)
            self._scripts["presence_renew"](keys=[self._key("~workers", "z")], args=[worker, ms])

        self._run(work)

    def presence_leave(self, worker: str) -> None:
        """Forget the worker and its counts."""

        def work(client: t.Any) -> None:
            client.zrem(self._key("~workers", "z"), worker)
            client.delete(self._key(f"~w:{worker}", "p"))

        self._run(work)

    def presence_counts(self, user_ids: t.Sequence[str]) -> dict[str, int]:
        """Open streams per user over the live workers (the live set, then each worker's hash)."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}

        def work(client: t.Any) -> dict[str, int]:
            workers = self._scripts["presence_live"](keys=[self._key("~workers", "z")])
            counts = dict.fromkeys(users, 0)
            pipe = client.pipeline()
            for worker in workers:
                pipe.hmget(self._key(f"~w:{_text(worker)}", "p"), users)
            for found in pipe.execute() if workers else []:
                for user, n in zip(users, found, strict=True):
                    if n is not None:
                        counts[user] += int(n)
            return {user: n for user, n in counts.items() if n > 0}

        counts: dict[str, int] = self._run(work)
        return counts

    # -- the scheduler (one script per bucket: atomic across workers and hosts) ---

    def schedule_many(self, kind: str, entries: t.Sequence[tuple[str, float, str]]) -> None:
        """Keep each entry until its due time, replacing any of this kind and key (one script per bucket)."""
        checked_kind(kind)
        buckets: dict[str, tuple[list[str], list[t.Any]]] = {}
        for key, due, payload in entries:
            keys = self._bucket(kind, key)
            buckets.setdefault(keys[0], (keys, []))[1].extend([kind, key, repr(float(due)), payload])

        def work(client: t.Any) -> None:
            for keys, args in buckets.values():
                self._write(client, keys[0], "schedule", keys, args)

        if entries:
            self._run(work)

    def unschedule(self, kind: str, key: str) -> bool:
        """Forget the entry; whether there was one."""
        checked_kind(kind)
        keys = self._bucket(kind, key)
        return bool(self._run(lambda client: self._write(client, keys[0], "unschedule", keys, [kind, key])))

    def pending(self, kind: str, key: str) -> str | None:
        """The payload of the entry of this kind and key, if it waits (claimed or not)."""
        checked_kind(kind)
        keys = self._bucket(kind, key)
        value = self._run(lambda client: client.hget(keys[1], f"{kind}\0{key}"))
        return None if value is None else _text(value).split("\t", 2)[2]

    def claim_due(self, now: float, limit: int, lease: float) -> list[Due]:
        """Take up to ``limit`` due entries for ``lease`` seconds, the earliest first (over every bucket)."""
        args = [repr(float(now)), int(limit), repr(float(now + lease))]

        def work(client: t.Any) -> list[tuple[float, Due]]:
            found: list[tuple[float, Due]] = []
            buckets = [[self._key(f"~s:{b}", name) for name in ("z", "h", "t", "n")] for b in range(_BUCKETS)]
            pipe = client.pipeline()
            for keys in buckets:  # first a look, so that an idle scheduler writes nothing
                pipe.zrangebyscore(keys[0], "-inf", args[0], start=0, num=1)
            for keys, due in zip(buckets, pipe.execute(), strict=True):
                if not due:
                    continue
                # No WAIT: a claim lost in a failover is claimed again when its lease ends.
                reply = self._write(client, keys[0], "claim_due", keys, args, wait=False)
                for i in range(0, len(reply), 6):
                    due = Due(
                        _text(reply[i + 1]),
                        _text(reply[i + 2]),
                        float(reply[i + 3]),
                        _text(reply[i + 4]),
                        int(reply[i + 5]),
                    )
                    found.append((float(reply[i]), due))
            return found

        found = sorted(self._run(work), key=lambda pair: pair[0])
        # Each bucket leased up to ``limit``; give back what is over it (due again at once).
        taken, over = found[:limit], found[limit:]
        if over:
            self._release([due for _, due in over], now)
        return [due for _, due in taken]

    def _release(self, claimed: t.Sequence[Due], now: float) -> None:
        """Give claims back: their entries are due at ``now`` again (scheduled anew, same payload)."""
        for due in claimed:
            self.schedule(due.kind, due.key, min(now, due.due), due.payload)

    def finish(self, claimed: t.Sequence[Due]) -> None:
        """Forget the entries these claims took, where they are still theirs."""
        buckets: dict[str, tuple[list[str], list[t.Any]]] = {}
        for due in claimed:
            keys = self._bucket(due.kind, due.key)
            buckets.setdefault(keys[0], (keys, []))[1].extend([due.kind, due.key, str(due.token)])

        def work(client: t.Any) -> None:
            for keys, args in buckets.values():
                self._write(client, keys[0], "finish", keys, args, wait=False)

        if claimed:
            self._run(work)

    def scheduled(self, kind: str) -> int:
        """How many entries of ``kind`` wait (summed over the buckets)."""
        checked_kind(kind)

        def work(client: t.Any) -> int:
            pipe = client.pipeline()
            for bucket in range(_BUCKETS):
                pipe.hget(self._key(f"~s:{bucket}", "n"), kind)
            return sum(int(n or 0) for n in pipe.execute())

        count: int = self._run(work)
        return count

    # -- the feed ---------------------------------------------------------

    def follow(self, keys: t.Sequence[str]) -> base.Followed | None:
        """Make the feed bring the notices of ``keys``; once it does, where it stands for each.

        A key not followed yet is subscribed on its slot's primary and caught up from its
        newest id read before; the first streams of several audiences that open together
        share one round. Returns the feed's position per key (the newest id it handed over).
        """
        if not self._feeding:
            return None
        with self._feed_lock:
            new = False
            for key in keys:
                self._leaving.pop(key, None)
                found = self._followed.get(key)
                new = new or found is None or not found.ready.is_set()
        if new:
            self._follows.submit(tuple(keys))
        # Under the delivery lock: each position is read with everything up to it handed to the hub.
        with self._deliver_lock:
            positions = {key: self._followed[key].pos for key in (BROADCAST_KEY, *keys)}
        return base.Followed(min(positions.values()), False, positions)

    def _follow_round(self, requests: list[tuple[str, ...]]) -> list[BaseException | None]:
        """Follow the keys of ``requests`` together; one answer per request."""
        keys = list(dict.fromkeys(key for request in requests for key in request))
        try:
            self._start_following(keys)
        except BrokerError as exc:
            return [exc] * len(requests)
        deadline = time.monotonic() + _CONFIRM
        for key in keys:
            entry = self._followed.get(key)
            if entry is None or not entry.ready.wait(max(0.0, deadline - time.monotonic())):
                error = BrokerUnavailable(f"{self.describe()}: the feed could not follow {key!r}")
                return [error] * len(requests)
        return [None] * len(requests)

    def _start_following(self, keys: t.Sequence[str]) -> None:
        """Read the newest id of each key not followed yet, and subscribe to it on its slot's primary."""
        with self._feed_lock:
            new = [key for key in keys if key not in self._followed]
        if not new:
            return

        def read(client: t.Any) -> list[int]:
            pipe = client.pipeline()
            for key in new:
                pipe.hget(self._key(key, "meta"), "last")
            return [int(last or 0) for last in pipe.execute()]

        lasts = self._run(read)
        with self._feed_lock:
            for key, last in zip(new, lasts, strict=True):
                if key not in self._followed:
                    self._followed[key] = _Follow(last)
                    self._route(key)

    def _route(self, key: str) -> None:
        """Subscribe to ``key``'s channel on the primary that serves it now (under the feed lock).

        If that fails, the key waits for the shard's reader (or the janitor) to try again.
        """
        entry = self._followed[key]
        shard = None
        try:
            client = self._connection()
            node = client.nodes_manager.get_node_from_slot(client.keyslot(self._channel(key)))
            shard = self._shards.get(node.name)
            if shard is None:
                pubsub = client.get_redis_connection(node).pubsub(ignore_subscribe_messages=False)
                shard = _Shard(node.name, pubsub)
            shard.pubsub.ssubscribe(self._channel(key))
        except (redis.RedisError, OSError) as exc:
            log.warning("feed could not subscribe to %r (%s); trying again", key, exc)
            entry.shard = None
            if shard is not None and shard.task is None:
                with contextlib.suppress(Exception):
                    shard.pubsub.close()
            return
        entry.shard = shard
        shard.keys.add(key)
        if shard.task is None:
            self._shards[shard.name] = shard
            shard.task = spawn(lambda: self._read(shard), name=f"sse-notify-cluster-feed-{shard.name}")

    def unfollow(self, key: str) -> None:
        """The last stream here of ``key`` closed: unsubscribe after :attr:`linger` seconds without one."""
        if key in self._followed and key not in (BROADCAST_KEY, CONTROL_KEY):
            self._leaving.pop(key, None)
            self._leaving[key] = time.monotonic()

    def _start_feed(self, handler: base.FeedHandler) -> None:
        """Follow broadcasts and control records (waiting until it does), and start the janitor."""
        self._janitor = spawn(self._tend, name="sse-notify-cluster-janitor")
        result = self._follow_round([(BROADCAST_KEY, CONTROL_KEY)])[0]
        if isinstance(result, BaseException):
            raise result

    def _stop_feed(self) -> None:
        """Drop every pub/sub connection (which wakes the readers), and wait for them to end."""
        with self._feed_lock:
            shards = list(self._shards.values())
            self._shards.clear()
        for shard in shards:
            with contextlib.suppress(Exception):
                shard.pubsub.connection.disconnect()
        for shard in shards:
            if shard.task is not None:
                shard.task.join(5)
        if self._janitor is not None:
            self._janitor.join(5)
            self._janitor = None

    def _tend(self) -> None:
        """Every so often: unsubscribe audiences that lingered without a stream, route the unrouted."""
        while not self._closed:
            time.sleep(min(_LISTEN, self.linger or _LISTEN))
            if self._closed:
                break
            now = time.monotonic()
            with self._feed_lock:
                while self._leaving:
                    key, left = next(iter(self._leaving.items()))
                    if now - left < self.linger:
                        break
                    del self._leaving[key]
                    entry = self._followed.pop(key, None)
                    if entry is not None and entry.shard is not None:
                        entry.shard.keys.discard(key)
                        with contextlib.suppress(redis.RedisError, OSError):
                            entry.shard.pubsub.sunsubscribe(self._channel(key))
                unrouted = [key for key, entry in self._followed.items() if entry.shard is None]
            if not unrouted:
                continue
            # Their primary went away (or their slot moved): learn the layout, then subscribe.
            with contextlib.suppress(BrokerError):
                self._run(self._refresh)
            with self._feed_lock:
                for key in unrouted:
                    entry = self._followed.get(key)
                    if entry is not None and entry.shard is None:
                        self._route(key)

    def _read(self, shard: _Shard) -> None:
        """Read one shard's messages until it fails or the store closes; then route its keys anew."""
        pubsub = shard.pubsub
        try:
            while not self._closed and self._shards.get(shard.name) is shard:
                message = pubsub.get_message(timeout=_LISTEN)
                if message is None or self._closed:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    self._on_message(message)
                elif kind == "ssubscribe":
                    self._catch_up(self._of_channel(_text(message["channel"])))
                elif kind == "sunsubscribe":
                    self._on_dropped(shard, self._of_channel(_text(message["channel"])))
        except Exception as exc:
            if self._closed:
                return
            log.warning("feed lost %s (%s): following its audiences on their new primaries", shard.name, exc)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
        if self._closed:
            return
        with self._feed_lock:
            if self._shards.get(shard.name) is shard:
                del self._shards[shard.name]
            for key in shard.keys:
                entry = self._followed.get(key)
                if entry is not None and entry.shard is shard:
                    entry.shard = None  # the janitor routes it once the layout is known again

    def _on_dropped(self, shard: _Shard, key: str) -> None:
        """Redis dropped a subscription (its slot moved to another primary), or we left it."""
        with self._feed_lock:
            entry = self._followed.get(key)
            shard.keys.discard(key)
            if entry is None or entry.shard is not shard:
                return  # we unsubscribed it
            log.info("feed subscription to %r moved: following it on its new primary", key)
            self._refresh(self._connection())
            self._route(key)

    def _on_message(self, message: t.Any) -> None:
        key = self._of_channel(_text(message["channel"]))
        entry = self._followed.get(key)
        if entry is None:
            return
        rows = [line.split("\t", 3) for line in _text(message["data"]).split("\n")]
        with self._deliver_lock:
            items = []
            for seq, kind, created, data in rows:
                if int(seq) > entry.pos:
                    entry.pos = int(seq)
                    items.append(base.stored_item(int(seq), kind, created, data))
            if items:
                self._deliver(items)

    def _catch_up(self, key: str) -> None:
        """Redis confirmed a subscription: hand over what ``key`` got after the feed's position; go live."""
        entry = self._followed.get(key)
        if entry is None:
            return
        keys = [self._key(key, "log"), self._key(key, "meta"), self._key(key, "ctl")]
        lost, entries, controls = self._run(
            lambda client: self._scripts["catch_up"](keys=keys, args=[entry.pos])
        )
        found: list[tuple[int, base.Item | None]] = []
        for stored in (entries, controls):
            for e in stored:
                seq, values = _entry_fields(e)
                kind = key if stored is entries else CONTROL_KEY
                found.append((seq, base.stored_item(seq, kind, _text(values[b"c"]), _text(values[b"d"]))))
        found.sort(key=lambda pair: pair[0])
        with self._deliver_lock:
            if lost:
                log.warning(
                    "feed missed notices of %r that are no longer kept: closing streams to resync", key
                )
                self._deliver([RESYNC])
            fresh = [item for seq, item in found if seq > entry.pos]
            if found:
                entry.pos = max(entry.pos, found[-1][0])
            if fresh:
                self._deliver(fresh)
        entry.ready.set()


def _node_at(host: str, port: int) -> t.Any:
    """A cluster node's address, as redis-py's cluster client takes it."""
    node: t.Any = redis.cluster.ClusterNode
    return node(host, port)


def _transient(error: BaseException) -> bool:
    """Whether a Redis error reply means "try again": a slot moving, a failover under way."""
    if isinstance(
        error,
        (
            redis.exceptions.MovedError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.MasterDownError,
            redis.exceptions.ReadOnlyError,
        ),
    ):
        return True
    return str(error).startswith(("LOADING", "CLUSTERDOWN"))
