"""How channels live in Redis Streams: one stream per channel, entry id ``0-{seq}``, and the few reads on them.

The writer is ``coby.cache.RedisCache`` (its flusher XADDs what the pipeline publishes); the readers are
``coby.bus.StreamReader`` (an API node's live channels) and the WebSocket resume (``coby.ws_resume``). Both sides
use only what is here, so the layout is defined once:

- the stream of channel ``trades:BTC-USDT`` is the key ``coby:s:trades:BTC-USDT``;
- an entry is ``{"d": <the envelope's JSON bytes>}`` under the id ``0-{seq}``: the stream id *is* the
  channel's sequence number, assigned by the collector that owns the channel. So "everything after seq N"
  is ``XRANGE key (0-N +`` (or ``XREAD ... 0-N``), a trimmed history shows as a first id above N+1, and an
  XADD of a seq at or below the stream's top is refused by Redis: a retried flush writes nothing twice, and
  a collector that lost a channel (a zombie after failover) cannot write into the new owner's numbering;
- ``status`` is written by every collector, so its ids are assigned by Redis (``0-*``: the top plus one)
  and readers take the seq from the id (``patch_seq``);
- queued channels (trades, ohlcv) keep about ``bus_stream_length`` entries (``MAXLEN ~``): what a reader
  that was away can still catch up on; book-like channels keep ``bus_book_stream_length`` (exact): each
  entry is a full state, only the newest matters.
"""

from __future__ import annotations

from typing import Any, Callable

import structlog

from coby.metrics import CACHE_ERRORS

log = structlog.get_logger("coby.cache")

PREFIX = "coby:s:"
#: Channels whose messages are each a full state: readers keep the newest, a missed one is no gap.
COALESCED_KINDS = frozenset({"book", "consolidated", "heatmap", "metrics", "status"})
#: Channels more than one process writes: their seq is assigned by Redis (``0-*``), not by a publisher.
SHARED_CHANNELS = frozenset({"status"})


def stream_key(channel: str) -> str:
    return PREFIX + channel


def channel_of(key: bytes | str) -> str:
    k = key.decode() if isinstance(key, bytes) else key
    return k[len(PREFIX):]


def is_coalesced(channel: str) -> bool:
    return channel.partition(":")[0] in COALESCED_KINDS


def seq_of_id(entry_id: bytes | str) -> int | None:
    """The seq an entry id ``0-{seq}`` carries (None for an id not written by coby)."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(seq) if ms == "0" and seq.isdigit() else None


def patch_seq(payload: bytes, seq: int) -> bytes:
    """``payload`` (an envelope: ``{"channel":..,"type":..,"seq":N,...}``) with its seq replaced: a shared
    channel's readers number its messages by the stream id, the same on every node."""
    i = payload.find(b'"seq":')
    if i < 0:
        return payload
    j = i + 6
    k = j
    while k < len(payload) and payload[k:k + 1] not in (b",", b"}"):
        k += 1
    return payload[:j] + str(seq).encode() + payload[k:]


def gap_message(channel: str, first: int, last: int | None) -> bytes:
    """What a reader gets where messages ``first..last`` of ``channel`` cannot be delivered (trimmed from the
    stream, or never written): ``{"channel", "type": "gap", "from", "to"}``."""
    last_s = "null" if last is None else str(last)
    return (b'{"channel":"%s","type":"gap","from":%d,"to":%s}' % (channel.encode(), first, last_s.encode()))


#: Appends many entries, each to its own stream, in one call; answers the ones refused as
#: ``[position, error, ...]``. One reply per batch instead of one per message: parsing replies is most of
#: what a pipelined XADD costs the client (redis-py without hiredis).
APPEND = """
local refused = {}
for i = 1, #KEYS do
  local r = redis.pcall('XADD', KEYS[i], 'MAXLEN', ARGV[1], ARGV[2], ARGV[2 * i + 1], 'd', ARGV[2 * i + 2])
  if type(r) == 'table' and r.err then
    refused[#refused + 1] = i
    refused[#refused + 1] = r.err
  end
end
return refused
"""
BATCH = 1000  # entries per call: a call holds Redis for its length (~1 ms a thousand)


async def add_commands(pipe: Any, script: Any, latest: dict[str, tuple[int | None, bytes]],
                 queued: list[tuple[str, int | None, bytes]], length: int, book_length: int) -> list[list[str]]:
    """Queue a flush's appends on ``pipe`` (``script``: ``APPEND`` registered): the newest state of each
    book-like channel (``latest``, trimmed exactly to ``book_length``) and every message of the queued
    channels (``queued``, trimmed to about ``length``). Returns, per call queued, the channels of its entries
    (to map what Redis refused, ``refused``)."""
    calls: list[list[str]] = []

    async def add(entries: list[tuple[str, int | None, bytes]], trim: list[Any]) -> None:
        for start in range(0, len(entries), BATCH):
            keys, args, chans = [], list(trim), []
            for channel, seq, payload in entries[start:start + BATCH]:
                keys.append(PREFIX + channel)
                args.append("0-*" if seq is None or channel in SHARED_CHANNELS else f"0-{seq}")
                args.append(payload)
                chans.append(channel)
            await script(keys=keys, args=args, client=pipe)  # queued on the pipeline (loaded there if need be)
            calls.append(chans)

    if latest:
        await add([(c, s, p) for c, (s, p) in latest.items()], ["=", book_length])
    await add(queued, ["~", length])
    return calls


#: The entries after a position in each of KEYS (ARGV: total budget, per-stream count, then one position per
#: key), as one bulk string: per entry ``"{key number} {id} {payload length}\n{payload}"``; a stream whose
#: newest entry is below the position (deleted, e.g. Redis wiped, and numbered again from 1) answers one entry
#: ``0-0`` with no payload: read it again from its start.
READ = r"""
local out = {}
local budget = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
for i = 1, #KEYS do
  if budget <= 0 then break end
  local entries = redis.call('XRANGE', KEYS[i], '(' .. ARGV[i + 2], '+', 'COUNT', math.min(per, budget))
  for _, e in ipairs(entries) do
    local f, payload = e[2], ''
    for j = 1, #f, 2 do
      if f[j] == 'd' then payload = f[j + 1] end
    end
    out[#out + 1] = i .. ' ' .. e[1] .. ' ' .. #payload .. '\n' .. payload
  end
  if #entries == 0 and ARGV[i + 2] ~= '0-0' then
    local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    local ms, seq = string.match(ARGV[i + 2], '(%d+)-(%d+)')
    local tms, tseq = -1, -1
    if #top > 0 then tms, tseq = string.match(top[1][1], '(%d+)-(%d+)') end
    if tonumber(tms) < tonumber(ms) or (tonumber(tms) == tonumber(ms) and tonumber(tseq) < tonumber(seq)) then
      out[#out + 1] = i .. ' 0-0 0\n'  -- the stream now ends below the position: it was wiped, numbering restarted
    end
  end
  budget = budget - #entries
end
return table.concat(out)
"""


def parse_batch(data: bytes, channels: list[str]) -> dict[str, list[tuple[bytes, bytes]]]:
    """``READ``'s reply as ``{channel: [(entry id, payload), ...]}`` (``channels``: its KEYS' channels)."""
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    pos, end = 0, len(data)
    while pos < end:
        nl = data.index(b"\n", pos)
        i, eid, n = data[pos:nl].split(b" ")
        pos = nl + 1 + int(n)
        out.setdefault(channels[int(i) - 1], []).append((eid, data[nl + 1:pos]))
    return out


async def last_seq(redis: Any, channel: str) -> int:
    """The seq of the newest entry of ``channel``'s stream (0: none)."""
    got = await redis.xrevrange(PREFIX + channel, "+", "-", count=1)
    if not got:
        return 0
    return seq_of_id(got[0][0]) or 0


async def read_since(script: Any, channel: str, after: int, count: int,
                     until: int | None = None) -> list[tuple[int, bytes]]:
    """Up to ``count`` messages of ``channel`` with seq above ``after`` (and at most ``until``), oldest first,
    as ``(seq, payload)``; ``script``: ``READ`` registered on a client."""
    data = await script(keys=[PREFIX + channel], args=[count, count, f"0-{after}"])
    out = []
    for eid, payload in parse_batch(data, [channel]).get(channel, ()):
        seq = int(eid[2:]) if eid[:2] == b"0-" else None
        if seq is None or not payload:
            continue
        if until is not None and seq > until:
            break
        out.append((seq, patch_seq(payload, seq) if channel in SHARED_CHANNELS else payload))
    return out


def refused(results: list[Any], calls: list[list[str]], logged: set[str],
            on_conflict: Callable[[str], None] | None) -> None:
    """What Redis refused of a flush's appends (``results``: the calls' replies, ``calls``: their channels).
    A seq at or below the stream's top is another writer's, or our own retried flush's: counted, logged
    once per channel, and the publisher told (``on_conflict(channel)``); anything else is counted and logged."""
    conflicted: set[str] = set()
    for r, chans in zip(results, calls):
        if isinstance(r, Exception):
            CACHE_ERRORS.labels("flush").inc()
            log.warning("cache_write_refused", channels=len(chans), error=str(r))
            continue
        for i in range(0, len(r or ()), 2):
            channel, error = chans[int(r[i]) - 1], r[i + 1]
            error = error.decode() if isinstance(error, bytes) else str(error)
            if "equal or smaller" in error:
                conflicted.add(channel)
                CACHE_ERRORS.labels("seq_conflict").inc()
            else:
                CACHE_ERRORS.labels("flush").inc()
                log.warning("cache_write_refused", channel=channel, error=error)
    for channel in conflicted:
        if channel not in logged:
            logged.add(channel)
            log.warning("bus_seq_conflict", channel=channel,
                        detail="the stream holds these seqs already (a retry, or another writer of the channel)")
        if on_conflict is not None:
            on_conflict(channel)
