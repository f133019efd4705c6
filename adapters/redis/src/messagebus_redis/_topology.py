"""Logical destinations -> Redis keys and consumer groups; the declarations and the Lua
scripts that keep multi-key steps atomic.

Mapping (``P`` is the ``prefix`` option, ``mb:`` by default):

- topic ``T``: the stream ``P t:{T}``; its group ``G`` is the consumer group ``G`` on it,
  created at the subscription's ``start_from``, else the URL option ``start_from`` (default:
  the stream's end when the group is first subscribed);
- queue ``Q``: the stream ``P q:{Q}`` with the one consumer group ``messagebus``, created at
  the stream's start (messages sent before the first consumer wait); acked entries are
  deleted;
- each group's retries: the stream ``<stream>:G:retry`` (queues: ``<stream>:retry``) that only
  that group reads, and the sorted set ``...:due`` holding delayed ones by due time;
- dead letters: the queue ``T.G.dlq`` / ``Q.dlq`` (named by the core), i.e. a stream.

The ``{...}`` hash tag puts a destination's keys in one Redis Cluster slot, so one script or
one read may touch them together. Logical names cannot hold ``{``, ``}`` or ``:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import exceptions as rex

from messagebus import TopologyError
from messagebus.transports import Destination, DestinationKind, Position, dead_letter_name

from ._errors import ERRORS
from ._options import RedisOptions

__all__ = [
    "DUE",
    "QUEUE_GROUP",
    "REDELIVER",
    "TRIM",
    "Names",
    "declare",
    "delete_queue",
    "names_for",
    "physical_names",
    "stream_key",
]

#: The consumer group of every queue stream.
QUEUE_GROUP = "messagebus"
_DEFAULTS = RedisOptions.model_validate({})


def stream_key(destination: Destination, prefix: str) -> str:
    """The stream key a destination's messages are added to. Pure."""
    kind = "t" if destination.kind is DestinationKind.TOPIC else "q"
    return f"{prefix}{kind}:{{{destination.name}}}"


@dataclass(frozen=True, slots=True)
class Names:
    """The keys and group one subscription uses. ``queue``: acked entries are deleted."""

    stream: str
    group: str
    retry: str
    due: str
    queue: bool


def names_for(source: Destination, prefix: str) -> Names:
    """The keys and group of a topic's group or a queue. Pure."""
    stream = stream_key(source, prefix)
    if source.kind is DestinationKind.QUEUE or not source.group:
        return Names(stream, QUEUE_GROUP, f"{stream}:retry", f"{stream}:due", True)
    base = f"{stream}:{source.group}"
    return Names(stream, source.group, f"{base}:retry", f"{base}:due", False)


def physical_names(destination: Destination, options: RedisOptions | None = None) -> dict[str, str]:
    """Role -> Redis name for ``destination``: ``stream`` always; for a queue or a topic's
    group also ``group`` (the consumer group), ``retry`` (its retry stream), ``due`` (its
    sorted set of delayed retries) and ``dead_letter`` (the stream the core dead-letters to).
    Only ``options.prefix`` changes names. Pure."""
    prefix = (options or _DEFAULTS).prefix
    if destination.kind is DestinationKind.TOPIC and not destination.group:
        return {"stream": stream_key(destination, prefix)}
    names = names_for(destination, prefix)
    dead = Destination(DestinationKind.QUEUE, dead_letter_name(destination.name, destination.group))
    return {
        "stream": names.stream,
        "group": names.group,
        "retry": names.retry,
        "due": names.due,
        "dead_letter": stream_key(dead, prefix),
    }


def start_id(start_from: str, position: Position = None) -> str:
    """The XGROUP CREATE id of a subscription's ``position`` (``None``: the ``start_from``
    option value). A group delivers the entries after its id, so a time ``t`` becomes the last
    id of the millisecond before ``t``: entries stored at or after ``t`` by the server's clock
    come (those of ``t``'s own millisecond stamped before it are skipped by the core). Pure."""
    if position == "earliest":
        return "0"
    if isinstance(position, datetime):
        ms = (position - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        return f"{ms - 1}-{2**64 - 1}" if ms > 0 else "0"
    return {"now": "$", "earliest": "0"}.get(start_from, start_from)


async def declare(client: Any, names: Names, start_from: str, position: Position = None) -> bool:
    """Create the group on its stream (at ``position``, else at the ``start_from`` option; a
    queue's at its start) and on its retry stream, with the streams. An existing group is kept
    where it is. Returns whether the group existed on its stream. Raises
    :class:`TopologyError` (a key of another type, no permission) or :class:`ConnectError`."""
    existed = False
    for stream, start in ((names.stream, "0" if names.queue else start_id(start_from, position)), (names.retry, "0")):
        try:
            await client.xgroup_create(stream, names.group, id=start, mkstream=True)
        except rex.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise ERRORS.map(exc, TopologyError, f"cannot create group {names.group!r} on {stream!r}") from exc
            existed = existed or stream == names.stream
        except rex.RedisError as exc:
            raise ERRORS.map(exc, TopologyError, f"cannot create group {names.group!r} on {stream!r}") from exc
    return existed


async def delete_queue(client: Any, name: str, prefix: str) -> None:
    """Delete queue ``name``'s stream, retry stream and due set, and those of its dead-letter
    queue ``name.dlq``. Idempotent (missing keys are fine). One DEL per key, so that keys of
    different cluster slots never meet in one command. Raises :class:`TopologyError` (no
    permission) or :class:`ConnectError`."""
    for queue in (name, dead_letter_name(name, None)):
        names = names_for(Destination(DestinationKind.QUEUE, queue), prefix)
        for key in (names.stream, names.retry, names.due):
            try:
                await client.delete(key)
            except rex.RedisError as exc:
                raise ERRORS.map(exc, TopologyError, f"cannot delete {key!r} of queue {name!r}") from exc


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

#: Redeliver one pending entry to its group only (retry, hand-back): if it is still this
#: consumer's, copy it with the new attempt and extra headers to the retry stream (now) or
#: the due set (later), and ack it (deleting it from a stream only this group reads), in one
#: atomic step: nothing lost, nothing doubled. KEYS: stream, retry, due. ARGV: group,
#: consumer, id, delay ms, attempt, delete (1/0), then header name/value pairs.
REDELIVER = (
    _NOW
    + """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
if #e == 0 then return 0 end
local extra = {['messagebus-attempt'] = true}
for i = 7, #ARGV, 2 do extra[ARGV[i]] = true end
local fields = {KEYS[1] .. ' ' .. ARGV[3]}
local old = e[1][2]
for i = 1, #old, 2 do
  if not extra[old[i]] then fields[#fields + 1] = old[i]; fields[#fields + 1] = old[i + 1] end
end
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'messagebus-attempt'; fields[#fields + 1] = ARGV[5]
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('ZADD', KEYS[3], now + delay, cmsgpack.pack(fields))
else
  redis.call('XADD', KEYS[2], '*', unpack(fields, 2))
end
return 1
"""
)

#: Move due retries (at most ARGV[1]) from the due set to the retry stream; returns how many
#: and the milliseconds until the next one is due (-1: none). KEYS: due, retry.
DUE = (
    _NOW
    + """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(items) do
  redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(m), 2))
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#items, -1} end
return {#items, math.max(tonumber(nxt[2]) - now, 0)}
"""
)

#: Trim a topic stream to ``maxlen`` entries (ARGV[1], -1: no limit) and ``retention`` ms
#: (ARGV[2], -1: none), never past an entry some group has not acknowledged or not read yet.
#: KEYS: stream. Returns how many entries were trimmed.
TRIM = (
    _NOW
    + """
local function parse(id) local ms, seq = string.match(id, '(%d+)-(%d+)') return tonumber(ms), tonumber(seq) end
local function less(a, b)
  local am, as = parse(a) local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local cut = nil
if tonumber(ARGV[2]) >= 0 then cut = (now - tonumber(ARGV[2])) .. '-0' end
local maxlen = tonumber(ARGV[1])
if maxlen >= 0 then
  local excess = redis.call('XLEN', KEYS[1]) - maxlen
  if excess > 0 then
    local r = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(excess, 10000) + 1)
    local c = r[#r][1]
    if cut == nil or less(cut, c) then cut = c end
  end
end
if cut == nil then return 0 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local keep = info['last-delivered-id']
  if info['pending'] > 0 then keep = redis.call('XPENDING', KEYS[1], info['name'])[2] end
  if less(keep, cut) then cut = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
"""
)
