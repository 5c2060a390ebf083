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


def entry_id(seq: int | None) -> str:
    return f"0-{seq}" if seq is not None else "0-*"


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


def add_command(pipe: Any, channel: str, seq: int | None, payload: bytes, length: int, book_length: int) -> None:
    """Queue the XADD of one message on ``pipe``."""
    if is_coalesced(channel):
        pipe.xadd(PREFIX + channel, {"d": payload}, id=entry_id(None if channel in SHARED_CHANNELS else seq),
                  maxlen=book_length, approximate=False)
    else:
        pipe.xadd(PREFIX + channel, {"d": payload}, id=entry_id(seq), maxlen=length, approximate=True)


async def last_seq(redis: Any, channel: str) -> int:
    """The seq of the newest entry of ``channel``'s stream (0: none)."""
    got = await redis.xrevrange(PREFIX + channel, "+", "-", count=1)
    if not got:
        return 0
    return seq_of_id(got[0][0]) or 0


async def read_since(redis: Any, channel: str, after: int, count: int, until: int | None = None) -> list[tuple[int, bytes]]:
    """Up to ``count`` messages of ``channel`` with seq above ``after`` (and at most ``until``), oldest first,
    as ``(seq, payload)``."""
    got = await redis.xrange(PREFIX + channel, f"(0-{after}", f"0-{until}" if until is not None else "+",
                             count=count)
    out = []
    for eid, fields in got:
        seq = seq_of_id(eid)
        payload = fields.get(b"d")
        if seq is None or payload is None:
            continue
        out.append((seq, patch_seq(payload, seq) if channel in SHARED_CHANNELS else payload))
    return out


def refused(results: list[Any], channels: list[str], logged: set[str],
            on_conflict: Callable[[str], None] | None) -> None:
    """The XADDs of a flush that Redis refused (``results``, per message of ``channels``): a seq at or below
    the stream's top is another writer's, or our own retried flush's (counted, logged once per channel, and
    the publisher told: ``on_conflict(channel)``); anything else is counted and logged."""
    conflicted: set[str] = set()
    for r, channel in zip(results, channels):
        if not isinstance(r, Exception):
            continue
        if "equal or smaller" in str(r):
            conflicted.add(channel)
            CACHE_ERRORS.labels("seq_conflict").inc()
        else:
            CACHE_ERRORS.labels("flush").inc()
            log.warning("cache_write_refused", channel=channel, error=str(r))
    for channel in conflicted:
        if channel not in logged:
            logged.add(channel)
            log.warning("bus_seq_conflict", channel=channel,
                        detail="the stream holds these seqs already (a retry, or another writer of the channel)")
        if on_conflict is not None:
            on_conflict(channel)
