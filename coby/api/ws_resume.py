"""WebSocket resume: a client that reconnects (to this API node or another) says the last seq it saw per
channel and gets what it missed, in order, then the live messages, with no gap and no repeat.

``{"op": "subscribe", "channels": ["trades:BTC-USDT"], "resume": {"trades:BTC-USDT": 907}}``

- queued channels (trades, ohlcv): while ``catch_up`` runs, the channel's live messages are held (as for a
  snapshot); the messages after 907 still in the channel's stream (``bus.read_since``: Redis, whatever node
  published them) are sent page by page as the client takes them, then the held ones above what was sent.
  Where the stream no longer holds them (trimmed to ``bus_stream_length``), the client gets one
  ``{"channel", "type": "gap", "from", "to"}`` in their place first. A hole between the stream's end and the
  first live message (this node's reader had not started on the channel yet, or the writer's flush was
  pending) is read from the stream again for up to ``HOLE_WAIT`` seconds before it is declared a gap.
  A bus that keeps no history (the in-process cache without Redis): the first live message above 908 is
  preceded by a gap message.
- a resume seq above the channel's newest in Redis (its numbering restarted: Redis lost its data): no
  resume, the live stream as it comes.
- book-like channels: resume is the snapshot (the latest state, ``coby.api.ws``) - each message is a full state.

Nothing here awaits the client's socket: messages are offered to the client's queues (``coby.api.ws.Client``),
whose limits apply (a client that does not take its backlog fails as a slow consumer, 4008).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from coby.streams import gap_message

PAGE = 500
RETRY = 0.1  # seconds between two reads of the stream while waiting for the live messages to join it
HOLE_WAIT = 2.0  # seconds a hole between the stream and the live messages may take to fill
QUIET_WAIT = 1.0  # seconds with nothing new anywhere after which the channel is released (the guard watches on)


def payload_seq(payload: bytes) -> int:
    """The seq a message covers up to: its ``seq``; a gap message's ``to``."""
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(msg, dict):
        return 0
    seq = msg.get("to") if msg.get("type") == "gap" else msg.get("seq")
    return seq if isinstance(seq, int) else 0


async def catch_up(client: Any, feed: Any, after: int) -> None:
    """Send ``client`` the messages of ``feed``'s channel after seq ``after``, then release the live ones it
    holds (``client.held[feed]``, set by the caller before the subscription's reply)."""
    bus, channel = client.hub.bus, feed.channel
    delivered = after
    waited = 0.0
    try:
        if getattr(bus, "keeps_history", False) and await _newest(bus, channel, after) < after:
            delivered = 0  # the channel's numbering restarted (Redis lost its data): the live stream, as it is
            return
        while True:
            held = client.held.get(feed)
            if held is None or client.failure is not None:
                return  # unsubscribed or failed meanwhile
            first = payload_seq(held[0]) if held else None
            if first is not None and first <= delivered + 1:
                break  # the held messages continue what was sent
            entries = await bus.read_since(channel, delivered, PAGE, None if first is None else first - 1)
            if entries is None:
                break  # no history: the guard tells the client of a jump on the first live message
            if feed not in client.held:
                return
            if entries:
                waited = 0.0
                if entries[0][0] > delivered + 1:  # trimmed from the stream
                    client.push(feed, gap_message(channel, delivered + 1, entries[0][0] - 1))
                for seq, payload in entries:
                    client.push(feed, payload)
                delivered = entries[-1][0]
                await client.drained()
                continue
            if first is not None and waited >= HOLE_WAIT:
                client.push(feed, gap_message(channel, delivered + 1, first - 1))
                delivered = first - 1
                break
            if first is None and waited >= QUIET_WAIT:
                break
            await asyncio.sleep(RETRY)
            waited += RETRY
    finally:
        release(client, feed, delivered)


async def _newest(bus: Any, channel: str, default: int) -> int:
    try:
        return await bus.last_seq(channel)
    except Exception:  # noqa: BLE001 - Redis unreachable: assume no restart; the reads below come back empty
        return default


def release(client: Any, feed: Any, delivered: int) -> None:
    """Send the held messages above ``delivered``, in order (a jump: a gap message first), and let the guard
    (``client.expect``) check the first live message after them. ``delivered`` 0: all of them, no guard."""
    held = client.held.pop(feed, None)
    if held is None or client.failure is not None or client.feeds.get(feed.channel) is not feed:
        return
    if not delivered:
        for payload in held:
            client.push(feed, payload)
        return
    for payload in held:
        seq = payload_seq(payload)
        if seq <= delivered:
            continue
        if seq > delivered + 1 and not payload.startswith(b'{"channel":"%s","type":"gap"' % feed.channel.encode()):
            client.push(feed, gap_message(feed.channel, delivered + 1, seq - 1))
        client.push(feed, payload)
        delivered = seq
    client.expect[feed] = delivered + 1


def expected(client: Any, feed: Any, payloads: list[bytes]) -> list[bytes]:
    """The guard after a resume: the first live messages of ``feed`` checked against the next seq expected -
    repeats dropped, a jump preceded by a gap message; then the guard is off for the channel."""
    nxt = client.expect.pop(feed)
    out: list[bytes] = []
    for i, payload in enumerate(payloads):
        seq = payload_seq(payload)
        if seq < nxt:
            continue
        if seq > nxt and not payload.startswith(b'{"channel":"%s","type":"gap"' % feed.channel.encode()):
            out.append(gap_message(feed.channel, nxt, seq - 1))
        out.extend(payloads[i:])
        return out
    client.expect[feed] = nxt  # all repeats: keep watching
    return out
