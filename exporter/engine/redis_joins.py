"""The join store shared by replicas: predictions, early labels and joined ids of one model kept in Redis.

Same interface and decisions as ``joins.JoinStore`` (an item's result depends only on the shared state and the
items before it), so a prediction taken by one replica joins the label taken by another. The window state stays
in each replica; only the decisions come from here.

Keys, all under the model's Redis Cluster hash tag ``{prefix:model}`` so that every script stays on one slot:

    {p:m}:w   hash   id -> waiting prediction   [member, pact, pending JSON]
    {p:m}:wz  zset   member -> arrival           (the age index: expiry and eviction)
    {p:m}:e   hash   id -> early label          [member, lact, label JSON, arrival]
    {p:m}:ez  zset   member -> arrival
    {p:m}:j   hash   id -> joined id            [member, kind, jact, pact, lact, payload, payload]
    {p:m}:jz  zset   member -> time of the join
    {p:m}:seq string the insertion counter

Records are msgpack arrays of strings, packed and read only by the Lua scripts; the payloads inside are JSON
written and read only by Python (Lua's cjson would round floats to 14 digits). A sorted-set member is a
16-hex-digit insertion number followed by the id, so entries of equal arrival leave in insertion order: while
time does not go backwards, eviction (the lowest arrival) and expiry pick exactly what the in-process store's
ordered dicts pick; between replicas whose clocks differ a little, the oldest by arrival is the right one.

Each of ``join_predictions``, ``join_labels`` and one step of ``expire`` is one Lua script: a batch is decided
atomically, item by item. Every key gets a Redis expiry of twice the TTL on each write, so a model that no
replica writes to or expires any more still leaves nothing behind; the cap bounds each part meanwhile. Drops
are counted by the replica whose call made them, so the counters add up across replicas; ``counts()`` is the
shared figure.

Replays. The app journals a request before it reaches the store and replays it, with the same token, after a
crash; a client's retry reuses its Idempotency-Key as token. A replay must get the answers of the first run and
change nothing, even after other requests moved the same ids on. So every record keeps the *action* that made
it: "p" or "l", the item's position in its batch, and the token (the position matters: a batch may carry an id
twice, and its two items had different answers). A joined record keeps the action that put the prediction
waiting (pact), the one that brought the label (lact, when it waited early), the one that made the join (jact),
and what the join answered. On each item, before deciding as usual:

    prediction: joined with jact == this action        -> the stored answer (DUP_JOIN, INLINE or EARLY)
                joined with pact == this action        -> WAITING (it waited; someone else's label joined it)
                waiting with pact == this action       -> WAITING
    label:      joined with jact == this action        -> (JOINED, the stored prediction)
                joined with lact == this action        -> WAITING (it waited; a prediction came and took it)
                early with lact == this action         -> WAITING
    otherwise: decide as usual.

"As usual" is right for every item that left no record: it was a DUP the first time, and an id only moves
forward (waiting or early -> joined), so it still finds what made it a duplicate, and stays DUP. It is also
right when the first run never happened (the crash came before the call). A replay that matches all its items
writes nothing, not even the insertion counter. The empty token ("no request") never matches, so calls without
a token are never taken for replays.

A replay must present the same items in the same order (the journaled body under the same config), since
positions identify them; its ``now`` does not matter for the items it matches.

Limits: a replay is exact while the records of its first run are still there, that is within the TTL and the
cap; after that, an item is decided afresh (a prediction whose entry expired waits again). Drops counted by a
first run that crashed before returning are lost, since the replay does not redo them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from exporter.engine.joins import (
    DROP_REASONS,
    DUP,
    DUP_JOIN,
    EARLY,
    INLINE,
    JOINED,
    WAITING,
    EarlyLabel,
    JoinStoreUnavailable,
    Pending,
)

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ModuleNotFoundError:  # an optional extra: only joins.backend: redis needs it
    redis = None

if TYPE_CHECKING:
    from exporter.config import Joins

# Entries dropped per step of expire(): bounds how long one script holds Redis.
EXPIRE_STEP = 5000


_COMMON = """
local W, WZ, E, EZ, J, JZ, SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, cap, life, token, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local base = nil
local evicted = {0, 0}
local function member(i, id)
  if not base then base = redis.call('INCRBY', SEQ, n) - n end
  return string.format('%016x', base + i) .. id
end
-- Insert a record, evicting the oldest entry first when the part is full (like JoinStore._put).
local function put(h, z, kind, i, id, score, record)
  if redis.call('ZCARD', z) >= cap then
    local oldest = redis.call('ZPOPMIN', z)
    if oldest[1] then
      redis.call('HDEL', h, string.sub(oldest[1], 17))
      if kind > 0 then evicted[kind] = evicted[kind] + 1 end
    end
  end
  local m = member(i, id)
  table.insert(record, 1, m)
  redis.call('ZADD', z, score, m)
  redis.call('HSET', h, id, cmsgpack.pack(record))
end
local function take(h, z, id)
  local raw = redis.call('HGET', h, id)
  if not raw then return nil end
  local r = cmsgpack.unpack(raw)
  redis.call('HDEL', h, id)
  redis.call('ZREM', z, r[1])
  return r
end
local function get(h, id)
  local raw = redis.call('HGET', h, id)
  if raw then return cmsgpack.unpack(raw) end
  return nil
end
local function finish(out)
  if base then
    for k = 1, 7 do redis.call('PEXPIRE', KEYS[k], life) end
  end
  out[1], out[2] = evicted[1], evicted[2]
  return out
end
local out = {0, 0}
"""

# ARGV after the common five: id, pending JSON, arrival, label JSON ('' = none) per item.
_PREDICTIONS = (
    _COMMON
    + """
for i = 1, n do
  local o = 5 + (i - 1) * 4
  local id, pending, arrival, label = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]
  local act = token ~= '' and ('p' .. i .. ':' .. token) or false
  local kind, a, b = 'waiting', '', ''
  local j = get(J, id)
  if j then
    if act and j[3] == act then kind, a, b = j[2], j[6], j[7]
    elseif not (act and j[4] == act) then kind = 'dup' end
  else
    local w = get(W, id)
    if w then
      if act and w[2] == act then kind = 'waiting'
      elseif label == '' then kind = 'dup'
      else
        take(W, WZ, id)
        kind, a = 'dup_join', w[3]
        put(J, JZ, 0, i, id, now, {kind, act or '', w[2], '', a, ''})
      end
    else
      local e = take(E, EZ, id)
      if label ~= '' then
        kind, a = 'inline', e and '1' or '0'
        put(J, JZ, 0, i, id, now, {kind, act or '', act or '', e and e[2] or '', a, ''})
      elseif e then
        kind, a, b = 'early', e[3], e[4]
        put(J, JZ, 0, i, id, now, {kind, act or '', act or '', e[2], a, b})
      else
        put(W, WZ, 1, i, id, arrival, {act or '', pending})
      end
    end
  end
  out[#out + 1] = kind
  out[#out + 1] = a
  out[#out + 1] = b
end
return finish(out)
"""
)

# ARGV after the common five: id, label JSON per item.
_LABELS = (
    _COMMON
    + """
for i = 1, n do
  local o = 5 + (i - 1) * 2
  local id, label = ARGV[o + 1], ARGV[o + 2]
  local act = token ~= '' and ('l' .. i .. ':' .. token) or false
  local kind, a = 'waiting', ''
  local j = get(J, id)
  if j then
    if act and j[3] == act then kind, a = 'joined', j[6]
    elseif not (act and j[5] == act) then kind = 'dup' end
  else
    local e = get(E, id)
    if e then
      if not (act and e[2] == act) then kind = 'dup' end
    else
      local w = take(W, WZ, id)
      if w then
        kind, a = 'joined', w[3]
        put(J, JZ, 0, i, id, now, {kind, act or '', w[2], act or '', a, ''})
      else
        put(E, EZ, 2, i, id, now, {act or '', label, now})
      end
    end
  end
  out[#out + 1] = kind
  out[#out + 1] = a
end
return finish(out)
"""
)

# KEYS: w, wz, e, ez, j, jz; ARGV: '(' .. cutoff, step. Returns expired predictions, labels, and 1 if a part
# had more than one step's worth.
_EXPIRE = """
local cutoff, step = ARGV[1], tonumber(ARGV[2])
local out = {0, 0, 0}
for p = 0, 2 do
  local h, z = KEYS[2 * p + 1], KEYS[2 * p + 2]
  local members = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff, 'LIMIT', 0, step)
  local m = #members
  if m > 0 then
    redis.call('ZREMRANGEBYRANK', z, 0, m - 1)
    for k = 1, m, 1000 do
      local ids = {}
      for q = k, math.min(k + 999, m) do ids[#ids + 1] = string.sub(members[q], 17) end
      redis.call('HDEL', h, unpack(ids))
    end
    if p < 2 then out[p + 1] = m end
    if m == step then out[3] = 1 end
  end
end
return out
"""

_COUNTS = "return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[2])}"

_KINDS = {k.encode(): k for k in (DUP, DUP_JOIN, INLINE, EARLY, WAITING, JOINED)}
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def connect(joins_config: Joins) -> redis.Redis:
    """A client for ``joins.redis_url``; connects on first use. One immediate retry covers a connection the
    server closed (a restart); calls are safe to repeat since the scripts answer a repeated token as before."""
    if redis is None:
        raise RuntimeError("joins.backend: redis needs the redis package (pip install 'mlmon[redis]')")
    timeout = joins_config.redis_timeout_seconds
    extra = {}
    if joins_config.redis_password_file:
        try:
            with open(joins_config.redis_password_file, encoding="utf-8") as fh:
                extra["password"] = fh.read().strip()
        except OSError as exc:
            raise JoinStoreUnavailable(
                f"cannot read joins.redis_password_file {joins_config.redis_password_file}: {exc.strerror}"
            ) from None
    return redis.Redis.from_url(
        joins_config.redis_url,
        **extra,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )


def describe(client: redis.Redis) -> str:
    """Where the client connects, as a URL without credentials."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return "redis"
    kw = pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


class RedisJoinStore:
    """One model's join store in Redis; see the module docstring for the layout and the replay rules."""

    shared = True

    def __init__(self, client: redis.Redis, prefix: str, model: str, ttl_seconds: float, cap: int):
        self.client = client
        self.ttl = ttl_seconds
        self.cap = cap
        tag = "{" + f"{prefix}:{model}" + "}"
        self.keys = [f"{tag}:{part}" for part in ("w", "wz", "e", "ez", "j", "jz", "seq")]
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._predictions = client.register_script(_PREDICTIONS)
        self._labels = client.register_script(_LABELS)
        self._expire = client.register_script(_EXPIRE)
        self._counts = client.register_script(_COUNTS)

    def join_predictions(self, items: list[tuple[str, Pending, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, what the prediction leaves behind, inline label or None) per prediction with an id."""
        if not items:
            return []
        args = self._head(now, token, len(items))
        for pid, pending, label in items:
            args.extend(
                (pid, _dump_pending(pending), repr(float(pending.arrival)), b"" if label is None else _dump(label))
            )
        reply = self._run(self._predictions, self.keys, args)
        self._count_evicted(reply)
        out: list[tuple] = []
        for k in range(2, len(reply), 3):
            kind, a, b = _KINDS[_bytes(reply[k])], reply[k + 1], reply[k + 2]
            if kind == DUP_JOIN:
                out.append((kind, _load_pending(a)))
            elif kind == INLINE:
                out.append((kind, _bytes(a) == b"1"))
            elif kind == EARLY:
                out.append((kind, EarlyLabel(float(b), orjson.loads(a))))
            else:
                out.append((kind, None))
        return out

    def join_labels(self, items: list[tuple[str, Any]], now: float, token: str = "") -> list[tuple]:
        """``items``: (id, label) per label. The first label of an id stays; a correction does not replace it."""
        if not items:
            return []
        args = self._head(now, token, len(items))
        for pid, label in items:
            args.extend((pid, _dump(label)))
        reply = self._run(self._labels, self.keys, args)
        self._count_evicted(reply)
        out: list[tuple] = []
        for k in range(2, len(reply), 2):
            kind = _KINDS[_bytes(reply[k])]
            out.append((kind, _load_pending(reply[k + 1]) if kind == JOINED else None))
        return out

    def counts(self) -> tuple[int, int]:
        """(predictions waiting for their label, labels waiting for their prediction), over all replicas."""
        waiting, early = self._run(self._counts, [self.keys[0], self.keys[2]], [])
        return int(waiting), int(early)

    def take_dropped(self) -> dict:
        """Drops this replica's calls made since the last call (the model state adds them to its counters)."""
        dropped, self.dropped = self.dropped, dict.fromkeys(DROP_REASONS, 0)
        return dropped

    def expire(self, now: float) -> None:
        """Drop entries older than the TTL, a bounded step per script."""
        cutoff = "(" + repr(float(now - self.ttl))
        while True:
            predictions, labels, more = self._run(self._expire, self.keys[:6], [cutoff, EXPIRE_STEP])
            self.dropped["prediction", "expired"] += int(predictions)
            self.dropped["label", "expired"] += int(labels)
            if not int(more):
                return

    def clear(self) -> None:
        """Forget every entry of the model, for every replica (a model reset); nothing is counted."""
        try:
            self.client.delete(*self.keys)
        except redis.RedisError as exc:
            raise JoinStoreUnavailable(
                f"the shared join store at {describe(self.client)} is unavailable: {exc}"
            ) from exc

    def _head(self, now: float, token: str, n: int) -> list:
        life_ms = max(1, math.ceil(2 * self.ttl * 1000))
        return [repr(float(now)), self.cap, life_ms, token, n]

    def _count_evicted(self, reply: list) -> None:
        self.dropped["prediction", "evicted"] += int(reply[0])
        self.dropped["label", "evicted"] += int(reply[1])

    def _run(self, script, keys: list[str], args) -> list:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:  # connection, timeout, a read-only replica, out of memory...
            raise JoinStoreUnavailable(
                f"the shared join store at {describe(self.client)} is unavailable: {exc}"
            ) from exc


def _dump(value: Any) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


def _dump_pending(p: Pending) -> bytes:
    return orjson.dumps([p.arrival, p.version, p.timestamp, p.prediction, p.scores, p.segments], option=_JSON_OPTIONS)


def _load_pending(raw: bytes | str) -> Pending:
    arrival, version, timestamp, prediction, scores, segments = orjson.loads(raw)
    return Pending(
        float(arrival),
        version,
        float(timestamp),
        prediction,
        tuple(float(s) for s in scores) if scores is not None else None,
        tuple(segments) if segments is not None else None,
    )


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# -- Idempotency-Keys shared by the replicas ------------------------------------------------------------

_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'owner', 'digest', 'response')
if not v[1] or v[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'digest', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if v[2] ~= ARGV[2] then return {'conflict'} end
if v[3] then return {'done', v[3]} end
return {'busy'}
"""

_MINE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then redis.call('DEL', KEYS[1]) return 1 end
if ARGV[2] == 'respond' then redis.call('HSET', KEYS[1], 'response', ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisRequests:
    """Which replica owns an Idempotency-Key, so that a retry landing on another replica is not applied twice.

    A replica *claims* a key (a short lease) before it journals the request, *confirms* it once journalled
    (the key then lives for storage.idempotency_ttl), and stores the *response* once applied. Another replica
    that gets the same key answers with that response, or 409 while there is none yet. If the owner died
    before journalling, its lease runs out and another replica may take the key; when the first one restarts
    and finds its journalled request owned by someone else, it skips it: the other replica counted it.
    """

    def __init__(self, client: redis.Redis, prefix: str, lease_seconds: float, ttl_seconds: float):
        self.client = client
        self.prefix = prefix
        self.lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self.ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        self._claim = client.register_script(_CLAIM)
        self._mine = client.register_script(_MINE)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:request:{key}"

    def claim(self, key: str, replica: str, digest: bytes) -> tuple[str, bytes | None]:
        """("claimed", None), ("conflict", None) for another body, ("done", response) or ("busy", None)."""
        reply = self._run(self._claim, [self._key(key)], [replica, digest.hex(), self.lease_ms])
        state = reply[0].decode()
        return state, (bytes(reply[1]) if len(reply) > 1 else None)

    def confirm(self, key: str, replica: str) -> None:
        self._run(self._mine, [self._key(key)], [replica, "confirm", self.ttl_ms, b""])

    def respond(self, key: str, replica: str, response: bytes) -> None:
        self._run(self._mine, [self._key(key)], [replica, "respond", self.ttl_ms, response])

    def release(self, key: str, replica: str) -> None:
        self._run(self._mine, [self._key(key)], [replica, "release", 0, b""])

    def owner(self, key: str) -> str | None:
        value = self._run(lambda keys, args: self.client.hget(keys[0], "owner"), [self._key(key)], [])
        return None if value is None else value.decode()

    def _run(self, script, keys: list[str], args) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise JoinStoreUnavailable(f"the shared store at {describe(self.client)} is unavailable: {exc}") from exc
