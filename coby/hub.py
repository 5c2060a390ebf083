"""The fan-out of one bus to WebSocket clients: one bus subscription and one pump task per channel in use.

The bus is the daemon's cache, or a replay session's own ``MemoryCache``: anything with
``subscribe(channel, maxsize)``, ``get_book`` and ``get_latest``. The pump takes each
message once, frames it once (``text_frame``), and offers both to every client of the
channel without awaiting (``client.offer_latest`` on book-like channels,
``client.offer_queued`` on trades and ohlcv); what a client does with it - write the frame
now, coalesce, queue, give up - is ``coby.ws``'s policy.
"""

from __future__ import annotations

import asyncio
import contextvars
import struct
from typing import TYPE_CHECKING, Any

from coby.metrics import WS_COALESCED, WS_MESSAGES
from coby.streams import COALESCED_KINDS

if TYPE_CHECKING:
    from coby.ws import Client

CLOSE_OVERLOADED = 4013  # the server itself lost messages of a queued channel
CLOSE_GOING_AWAY = 1001  # shutdown, or the source of the channels (a replay session) ended

_LEN1, _LEN2, _LEN3 = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 5.2: what a server sends). The hub builds it once
    per message and writes it to every client that is keeping up."""
    n = len(payload)
    if n < 126:
        return _LEN1.pack(0x81, n) + payload
    if n < 65536:
        return _LEN2.pack(0x81, 126, n) + payload
    return _LEN3.pack(0x81, 127, n) + payload


async def stored_state(bus: Any, channel: str) -> Any | None:
    """The latest envelope the pipeline stored for ``channel`` (None for trades, or before the first)."""
    kind, *parts = channel.split(":")
    if kind == "book":
        return await bus.get_book(parts[0], parts[1])
    if kind in ("consolidated", "heatmap", "metrics"):
        return await bus.get_latest(kind, parts[0])
    if kind == "ohlcv":
        return await bus.get_latest(f"ohlcv:{parts[1]}", parts[0])
    if kind == "status":
        return await bus.get_latest("status", "*")
    return None


class Feed:
    """One channel of a hub: its bus subscription, its pump task, its clients."""

    __slots__ = ("channel", "kind", "coalesce", "sub", "task", "clients", "dropped", "sent", "coalesced")

    def __init__(self, channel: str, sub: Any) -> None:
        self.channel = channel
        self.kind = channel.split(":", 1)[0]
        self.coalesce = self.kind in COALESCED_KINDS
        self.sub = sub
        self.task: asyncio.Task | None = None
        self.clients: set[Client] = set()
        self.dropped = 0
        self.sent = WS_MESSAGES.labels(self.kind)
        self.coalesced = WS_COALESCED.labels(self.kind)


class Hub:
    """Fans the channels of one bus out to WebSocket clients. ``bus``: a ``MemoryCache``-like object
    (``subscribe``, ``get_book``, ``get_latest``) - the daemon's cache or a replay session's bus."""

    def __init__(self, bus: Any, *, bus_queue: int = 10_000) -> None:
        self.bus = bus
        self.bus_queue = bus_queue
        self.clients: set[Client] = set()
        self._feeds: dict[str, Feed] = {}
        self._retired: set[asyncio.Task] = set()
        self.closed = False

    def attach(self, client: "Client", channel: str) -> Feed:
        feed = self._feeds.get(channel)
        if feed is None:
            feed = Feed(channel, self.bus.subscribe(channel, maxsize=self.bus_queue))
            # a context of its own: the pump serves every client of the channel, not the first one's request
            feed.task = asyncio.get_running_loop().create_task(self._pump(feed), name=f"coby-ws-pump:{channel}",
                                                               context=contextvars.Context())
            self._feeds[channel] = feed
        feed.clients.add(client)
        return feed

    def detach(self, client: "Client", channel: str) -> None:
        feed = self._feeds.get(channel)
        if feed is None:
            return
        feed.clients.discard(client)
        if not feed.clients:
            del self._feeds[channel]
            feed.sub.close()
            if feed.task is not None:
                feed.task.cancel()
                self._retired.add(feed.task)
                feed.task.add_done_callback(self._retired.discard)

    @property
    def channels(self) -> int:
        return len(self._feeds)

    async def _pump(self, feed: Feed) -> None:
        queue = feed.sub.queue
        while True:
            channel, payload = await queue.get()
            batch = [payload]
            while not queue.empty():
                batch.append(queue.get_nowait()[1])
            if feed.sub.dropped != feed.dropped:  # the bus dropped messages before this pump took them
                lost, feed.dropped = feed.sub.dropped - feed.dropped, feed.sub.dropped
                if not feed.coalesce:
                    for client in tuple(feed.clients):
                        client.fail(f"server overloaded: {lost} messages lost on {channel}", "overload",
                                    CLOSE_OVERLOADED)
            sent = 0
            if feed.coalesce:
                latest = batch[-1]
                frame = text_frame(latest)
                for client in tuple(feed.clients):
                    sent += client.offer_latest(feed, latest, frame)
            else:  # one write of all the batch's frames per client that keeps up
                frames = b"".join(text_frame(p) for p in batch)
                for client in tuple(feed.clients):
                    sent += client.offer_many(feed, batch, frames)
            if sent:
                feed.sent.inc(sent)

    async def aclose(self, message: str = "server shutting down") -> None:
        """Disconnect every client (close code 1001, ``message``) and stop the pumps. Idempotent."""
        self.closed = True
        for client in tuple(self.clients):
            client.fail(message, "shutdown", CLOSE_GOING_AWAY, notify=False)
        tasks = [f.task for f in self._feeds.values() if f.task is not None] + list(self._retired)
        for feed in self._feeds.values():
            feed.sub.close()
        self._feeds.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
